//! The systemd unit of `deploy/systemd`, installed as the README's "Deploy" section says, into a
//! root directory of its own (no systemd runs here as PID 1): `systemd-analyze verify` accepts
//! it with this build's agent as its `ExecStart`, without a warning, and `systemctl enable`
//! wires it into `multi-user.target`. A unit naming a missing binary, or a misspelt key, is
//! refused or warned about: the check can fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn unit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/wm-agent.service")
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// A root with the host's system units (for the targets the unit names) and the README's two
/// `install` commands done into it.
fn install_root(name: &str, unit_text: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("wm-systemd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("usr/lib/systemd")).unwrap();
    std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    let system =
        ["/usr/lib/systemd/system", "/lib/systemd/system"].into_iter().find(|p| Path::new(p).is_dir()).unwrap();
    assert!(run("cp", &["-a", system, &root.join("usr/lib/systemd/").display().to_string()]).status.success());
    let source = root.join("wm-agent.service.src");
    std::fs::write(&source, unit_text).unwrap();
    let binary = root.join("usr/local/bin/wm-agent");
    let installed = root.join("etc/systemd/system/wm-agent.service");
    for (from, to, mode) in
        [(Path::new(env!("CARGO_BIN_EXE_agent")), &binary, "0755"), (source.as_path(), &installed, "0644")]
    {
        let out = run("install", &["-D", "-m", mode, &from.display().to_string(), &to.display().to_string()]);
        assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    }
    root
}

fn verify(root: &Path) -> Output {
    run("systemd-analyze", &["verify", &format!("--root={}", root.display()), "wm-agent.service"])
}

#[test]
fn the_unit_verifies_and_enables_with_the_hardening_it_claims() {
    if !Path::new("/usr/bin/systemd-analyze").exists() && !Path::new("/bin/systemd-analyze").exists() {
        assert!(!test_support::runtimes::ci(), "systemd-analyze is missing (Debian's systemd package)");
        println!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let text = std::fs::read_to_string(unit()).unwrap();
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LimitNOFILE=16384",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(text.contains(hardening), "the unit lacks {hardening:?}");
    }
    let root = install_root("good", &text);
    let verified = verify(&root);
    let said = String::from_utf8_lossy(&verified.stderr).into_owned() + &String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let enabled = run("systemctl", &[&format!("--root={}", root.display()), "enable", "wm-agent.service"]);
    assert!(enabled.status.success(), "systemctl enable: {}", String::from_utf8_lossy(&enabled.stderr));
    // A link into the root (absolute, so read as a link: the host has no such unit).
    assert!(
        std::fs::symlink_metadata(root.join("etc/systemd/system/multi-user.target.wants/wm-agent.service")).is_ok()
    );
    let _ = std::fs::remove_dir_all(&root);

    // The check can fail: a missing binary is refused, a misspelt key is said.
    let broken = install_root(
        "broken",
        &text.replace("ExecStart=/usr/local/bin/wm-agent", "ExecStart=/usr/local/bin/wm-agentx"),
    );
    assert!(!verify(&broken).status.success());
    let _ = std::fs::remove_dir_all(&broken);
    let misspelt = install_root("misspelt", &text.replace("PrivateTmp=yes", "PrivateTemp=yes"));
    let said = String::from_utf8_lossy(&verify(&misspelt).stderr).into_owned();
    assert!(said.contains("PrivateTemp"), "{said}");
    let _ = std::fs::remove_dir_all(&misspelt);
}
