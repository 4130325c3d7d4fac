//! `cairnd`'s settings: a TOML file in the profile directory (or `--config`) fills in
//! what flags and environment variables leave out; a mistake in it is a clear error.

mod common;

use common::{cairnd, run};

fn settings(profile: &std::path::Path, text: &str) {
    std::fs::write(profile.join("cairnd.toml"), text).unwrap();
}

#[test]
fn the_settings_file_fills_in_what_flags_leave_out_and_flags_win() {
    let profile = tempfile::tempdir().unwrap();
    settings(
        profile.path(),
        r#"
listen = ["/ip4/127.0.0.1/tcp/4100"]
bootstrap = ["/ip4/127.0.0.1/tcp/4001"]
webrtc = false
stun = ["stun:stun.example.org:3478"]
webrtc_udp = ["127.0.0.1:0"]
"#,
    );
    let shown = run(profile.path(), &["config"]);
    for line in [
        "listen /ip4/127.0.0.1/tcp/4100",
        "bootstrap /ip4/127.0.0.1/tcp/4001",
        "relay false",
        "webrtc false",
        "webrtc-udp 127.0.0.1:0",
        "stun stun:stun.example.org:3478",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in\n{shown}");
    }
    let shown = run(
        profile.path(),
        &["--listen", "/ip4/127.0.0.1/tcp/4200", "--relay", "config"],
    );
    assert!(shown.lines().any(|l| l == "listen /ip4/127.0.0.1/tcp/4200"), "{shown}");
    assert!(shown.lines().any(|l| l == "relay true"), "{shown}");
    assert!(
        shown.lines().any(|l| l == "bootstrap /ip4/127.0.0.1/tcp/4001"),
        "{shown}"
    );
}

#[test]
fn without_a_settings_file_the_defaults_apply() {
    let profile = tempfile::tempdir().unwrap();
    let shown = run(profile.path(), &["config"]);
    assert!(shown.lines().any(|l| l == "webrtc true"), "{shown}");
    assert!(shown.lines().any(|l| l == "webrtc-udp 0.0.0.0:0"), "{shown}");
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("listen /ip4/0.0.0.0/udp/0/quic-v1")),
        "{shown}"
    );
}

#[test]
fn a_misspelt_key_or_an_oversized_file_is_refused_with_a_clear_error() {
    let profile = tempfile::tempdir().unwrap();
    let refused = |text: &str, expected: &str| {
        settings(profile.path(), text);
        let output = cairnd(None, profile.path(), &["config"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(expected), "{expected:?} in {stderr}");
    };
    refused("listn = []\n", "unknown field `listn`");
    refused("listen = [\"not an address\"]\n", "not a valid cairnd settings file");
    refused(&"# padding\n".repeat(10_000), "is over");
}
