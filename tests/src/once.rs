//! Exactly-once checks: how many copies of each Message-ID a hub user's
//! Maildir holds, and the assertion that a set of messages arrived once
//! each (after a session was cut, a retry, a lost acknowledgement).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Env;

/// How many copies of each Message-ID a hub user's Maildir holds.
pub fn copies(env: &Env, user: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for message in Env::read_maildir(&env.hub_maildir(user)) {
        let text = String::from_utf8_lossy(&message);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("Message-ID: "))
            .unwrap_or("(none)")
            .to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}

/// Every id in `ids` (`<ID@leaf.test>` in the message) arrived exactly
/// once in each of `users`' Maildirs, waiting at most `timeout` for them.
pub fn assert_exactly_once(env: &Env, users: &[&str], ids: &[String], timeout: Duration) {
    for user in users {
        env.wait_maildir(user, ids.len(), timeout);
        // Give a duplicate time to show up.
        std::thread::sleep(Duration::from_secs(2));
        let seen = copies(env, user);
        for id in ids {
            let n = seen.get(&format!("<{id}@leaf.test>")).copied().unwrap_or(0);
            if n != 1 {
                env.fail(&format!("{user}: {id} arrived {n} times"));
            }
        }
        assert_eq!(seen.values().sum::<usize>(), ids.len(), "{user}: {seen:?}");
    }
}
