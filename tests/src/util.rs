//! Small process and file helpers for the harness: every command runs bounded in
//! time, and every failure panics with what ran, its exit status and its output.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{Group, User};

/// Root of every test environment. Not under /tmp: sshd's `StrictModes` refuses
/// files below a world-writable directory.
pub const TEST_ROOT: &str = "/var/lib/bsmtp-ssh-tests";

/// How long an ordinary administrative command (postfix, postconf, ssh-keygen) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_mins(1);

static PROCESS_LOCK: Mutex<()> = Mutex::new(());

/// A lock held across threads of this process and across test processes:
/// system users and the default main.cf are shared by every environment.
pub struct GlobalLock {
    _file: Flock<File>,
    _guard: MutexGuard<'static, ()>,
}

/// Takes the global lock (a `Mutex` for threads, `flock(2)` for processes).
pub fn global_lock() -> GlobalLock {
    // A test that panicked while holding the mutex leaves nothing half-done
    // that the next holder cannot redo, so a poisoned lock is still usable.
    let guard = PROCESS_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    ensure_test_root();
    let path = Path::new(TEST_ROOT).join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|err| panic!("open {}: {err}", path.display()));
    let file = Flock::lock(file, FlockArg::LockExclusive)
        .unwrap_or_else(|(_, err)| panic!("flock {}: {err}", path.display()));
    GlobalLock {
        _file: file,
        _guard: guard,
    }
}

/// Creates [`TEST_ROOT`] root-owned, mode 0755.
pub fn ensure_test_root() {
    let root = Path::new(TEST_ROOT);
    fs::create_dir_all(root).unwrap_or_else(|err| panic!("create {TEST_ROOT}: {err}"));
    chown(root, Some(0), Some(0)).unwrap_or_else(|err| panic!("chown {TEST_ROOT}: {err}"));
    set_mode(root, 0o755);
}

/// Sets a file's permission bits, panicking with the path on error.
pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("chmod {mode:o} {}: {err}", path.display()));
}

/// Changes owner and group by name, panicking with the path on error.
pub fn chown_to(path: &Path, user: &str, group: Option<&str>) {
    let uid = lookup_user(user).uid.as_raw();
    let gid = group.map(|g| {
        Group::from_name(g)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("group {g} does not exist"))
            .gid
            .as_raw()
    });
    chown(path, Some(uid), gid)
        .unwrap_or_else(|err| panic!("chown {user} {}: {err}", path.display()));
}

/// Looks up a system user that must exist.
pub fn lookup_user(name: &str) -> User {
    User::from_name(name)
        .unwrap_or_else(|err| panic!("look up user {name}: {err}"))
        .unwrap_or_else(|| panic!("user {name} does not exist"))
}

/// Creates a directory and its parents with the given mode on the last one.
pub fn mkdir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|err| panic!("mkdir {}: {err}", path.display()));
    set_mode(path, mode);
}

/// Writes a whole file with the given mode, dated two seconds ago: Postfix
/// (`load_file`) sleeps in 300 ms steps until a table or main.cf it reads is
/// older than the current second, which cost about 1.5 s per command.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) {
    fs::write(path, contents).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
    set_mode(path, mode);
    let past = std::time::SystemTime::now() - Duration::from_secs(2);
    File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(past))
        .unwrap_or_else(|err| panic!("set mtime of {}: {err}", path.display()));
}

/// Reads a file as text (lossy), or an empty string when it does not exist yet.
pub fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}

/// The last `lines` lines of a text.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Describes a command for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut out = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        out.push(' ');
        out.push_str(&arg.to_string_lossy());
    }
    out
}

/// Formats a finished command's status and output for a panic message.
pub fn explain(what: &str, status: ExitStatus, stdout: &[u8], stderr: &[u8]) -> String {
    format!(
        "{what}: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    )
}

/// Runs a command with `stdin` as input and kills it after `timeout`.
/// Returns its output whatever the exit status; panics only if it cannot start
/// or runs too long.
pub fn run_timeout(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let data = stdin.to_vec();
    run_timeout_from(cmd, Stdio::piped(), timeout, move |input| {
        // A command that exits without reading its input gives EPIPE: not our error.
        if let Some(mut input) = input {
            let _ = input.write_all(&data);
        }
    })
}

/// [`run_timeout`] with the file `stdin` as standard input (`cmd < file`):
/// a regular file, not a pipe.
pub fn run_timeout_file(cmd: &mut Command, stdin: &Path, timeout: Duration) -> Output {
    let file = File::open(stdin).unwrap_or_else(|err| panic!("{}: {err}", stdin.display()));
    run_timeout_from(cmd, Stdio::from(file), timeout, |_| {})
}

fn run_timeout_from(
    cmd: &mut Command,
    stdin: Stdio,
    timeout: Duration,
    feed: impl FnOnce(Option<std::process::ChildStdin>) + Send + 'static,
) -> Output {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {what}: {err}"));
    let input = child.stdin.take();
    let writer = thread::spawn(move || feed(input));
    let out_reader = reader(child.stdout.take().expect("stdout is piped"));
    let err_reader = reader(child.stderr.take().expect("stderr is piped"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what}: still running after {timeout:?}, killed");
            }
            Err(err) => panic!("{what}: wait: {err}"),
        }
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn reader(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Runs a command with no input and panics unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = run_timeout(cmd, b"", COMMAND_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        explain(&what, out.status, &out.stdout, &out.stderr)
    );
    out
}

/// Polls `probe` every 50 ms until it returns `Some` or `timeout` passes.
pub fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Quotes one word for `/bin/sh` when it holds anything but safe characters.
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The files of a Maildir's `new/` and `cur/`, oldest name first.
pub fn maildir_files(maildir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(entries) = fs::read_dir(maildir.join(sub)) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

/// About `size` bytes (cut at a line end) of real English text: Debian's
/// license texts, which base-files always installs. What mail text
/// compresses like (zlib's default level: about 3 x), unlike base64
/// attachments.
pub fn license_text(size: usize) -> Vec<u8> {
    let mut text = Vec::new();
    for name in [
        "GPL-3",
        "Apache-2.0",
        "MPL-2.0",
        "Artistic",
        "CC0-1.0",
        "BSD",
        "GFDL-1.3",
    ] {
        let path = format!("/usr/share/common-licenses/{name}");
        text.extend(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")));
    }
    text.truncate(size);
    let cut = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    text.truncate(cut);
    text
}
