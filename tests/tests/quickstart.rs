//! README.md's "Quick start (by hand)", followed line by line against real
//! Postfix instances and sshd ([`bsmtp_ssh_tests::quickstart`]). The
//! package's quick start needs the package installed: scripts/test-package
//! runs it through the `package-quickstart` binary.

#[test]
fn readme_quick_start_delivers_to_the_hub() {
    bsmtp_ssh_tests::quickstart::by_hand();
}
