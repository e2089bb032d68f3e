//! Names the platform groups that `src/sockopt.rs` selects on, so each `cfg` says what it means.
use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(full_keepalive)");
    println!("cargo::rustc-check-cfg=cfg(user_timeout)");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT settable and readable.
    if matches!(
        os.as_str(),
        "linux" | "android" | "macos" | "ios" | "freebsd" | "netbsd"
    ) {
        println!("cargo::rustc-cfg=full_keepalive");
    }
    // TCP_USER_TIMEOUT.
    if matches!(os.as_str(), "linux" | "android") {
        println!("cargo::rustc-cfg=user_timeout");
    }
}
