//! The README's "Quick start with the package", followed line by line with
//! the installed package's programs (`BSMTP_TEST_INSTALLED=/usr/sbin`):
//! scripts/test-package runs it after installing the package. Exits 0 when
//! the message arrived at the hub; panics (exit 101) with the logs of all
//! three daemons otherwise.

fn main() {
    let Some(installed) = std::env::var_os(bsmtp_ssh_tests::INSTALLED_ENV) else {
        eprintln!(
            "package-quickstart: set {}=/usr/sbin with the package installed (scripts/test-package does)",
            bsmtp_ssh_tests::INSTALLED_ENV
        );
        std::process::exit(2);
    };
    bsmtp_ssh_tests::quickstart::with_the_package(installed.into());
    println!("package-quickstart: the README's package quick start delivered to the hub");
}
