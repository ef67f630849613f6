//! A bastion (jump host) in front of the environment's hub: a second sshd
//! whose only key is the leaf's, restricted the way the README shows,
//! `restrict,port-forwarding,permitopen="127.0.0.1:HUBPORT",command="/bin/false"`,
//! so it can forward to the hub's sshd and do nothing else; and the leaf
//! config that reaches the hub through it (`proxy_jump`).

use std::path::PathBuf;

use crate::hubs::HubSpec;
use crate::sshd::Sshd;
use crate::system::{HUB_USER, LEAF_USER};
use crate::util::{chown_to, read_lossy, write_file};
use crate::{Env, HUB_PEER};

/// The `[peer.NAME]` section the tests give the bastion.
pub const BASTION: &str = "jump";

/// A bastion sshd; stopped on drop.
pub struct Bastion {
    /// Its `[peer.NAME]` section.
    pub name: String,
    /// The sshd (its own host key, config and log).
    pub sshd: Sshd,
    /// The leaf's pin of the bastion's host key.
    pub known_hosts: PathBuf,
}

impl Bastion {
    /// Its `authorized_keys` line for the leaf's key: forwarding to
    /// `127.0.0.1:port` only, no shell, no command.
    pub fn key_line(env: &Env, port: u16) -> String {
        let public = read_lossy(&env.leaf_key().with_extension("pub"));
        let public: Vec<&str> = public.split_whitespace().take(2).collect();
        format!(
            "restrict,port-forwarding,permitopen=\"127.0.0.1:{port}\",command=\"/bin/false\" {}\n",
            public.join(" ")
        )
    }

    /// Rewrites its `authorized_keys` (for [`HUB_USER`], the account the
    /// bastion's login uses here).
    pub fn set_authorized_keys(&self, text: &str) {
        write_file(&self.sshd.authorized_keys(HUB_USER), text, 0o644);
    }

    /// Its section, for [`Env::write_bastion_config`].
    pub fn spec(&self) -> HubSpec {
        HubSpec {
            name: self.name.clone(),
            port: self.sshd.port(),
            known_hosts: self.known_hosts.clone(),
            lines: Vec::new(),
        }
    }
}

impl Env {
    /// Starts a bastion whose key line permits forwarding to the hub's
    /// sshd only, and pins its host key for the leaf.
    pub fn start_bastion(&self) -> Bastion {
        self.start_bastion_to(BASTION, self.sshd_port())
    }

    /// Starts a bastion called `name` whose key line permits forwarding
    /// to `127.0.0.1:port` only (the hub, another bastion, a silent
    /// port), and pins its host key for the leaf.
    pub fn start_bastion_to(&self, name: &str, port: u16) -> Bastion {
        let mut sshd = Sshd::create(self.base().join(format!("ssh-{name}")));
        // DEBUG1 logs each forward ("server_request_direct_tcpip").
        sshd.set_log_level("DEBUG1");
        write_file(
            &sshd.authorized_keys(HUB_USER),
            Bastion::key_line(self, port),
            0o644,
        );
        sshd.start(true);
        let known_hosts = self.base().join(format!("leaf/known_hosts-{name}"));
        write_file(
            &known_hosts,
            format!("[127.0.0.1]:{} {}\n", sshd.port(), sshd.host_public_key()),
            0o644,
        );
        chown_to(&known_hosts, LEAF_USER, None);
        Bastion {
            name: name.to_owned(),
            sshd,
            known_hosts,
        }
    }

    /// Rewrites the leaf's bsmtp-ssh.conf so that the peer `hub` is the
    /// environment's hub reached through `bastion` (`hub_lines` added to
    /// the hub's section, e.g. `proxy_jump = "jump"`).
    pub fn write_bastion_config(&self, bastion: &HubSpec, hub_lines: &[&str]) {
        let mut hub = self.hub_spec(HUB_PEER);
        hub.lines = hub_lines.iter().map(|l| (*l).to_owned()).collect();
        self.write_peer_sections(&[hub, bastion.clone()], "");
    }
}
