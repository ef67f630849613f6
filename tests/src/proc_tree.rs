//! Just enough of /proc to find and signal processes a test started.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn stat(pid: i32) -> Option<(String, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let parent = text[close + 2..].split(' ').nth(1)?.parse().ok()?;
    Some((comm, parent))
}

fn all() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process's command name.
pub fn comm(pid: i32) -> Option<String> {
    stat(pid).map(|(comm, _)| comm)
}

/// Whether it still exists (and is not a zombie we could reap).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// Direct children.
pub fn children(parent: i32) -> Vec<i32> {
    all()
        .into_iter()
        .filter(|&p| stat(p).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// All descendants.
pub fn descendants(root: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for child in children(p) {
            found.push(child);
            todo.push(child);
        }
    }
    found
}

/// The process named `comm` whose command line mentions `needle`.
pub fn find_by_cmdline(needle: &str, comm_name: &str) -> Option<i32> {
    all().into_iter().find(|&p| {
        comm(p).as_deref() == Some(comm_name)
            && std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

/// Sends `signal`; a process that is already gone is fine.
pub fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}
