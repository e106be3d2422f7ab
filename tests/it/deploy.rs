//! `cross/deploy.sh --dry-run`: prints every command and runs none of them.
//! `ssh`, `scp` and `bash` are shadowed on PATH by scripts that leave a mark,
//! so a command that really ran would show.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::util::*;

fn dry_run(args: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let fake = tempfile::tempdir().unwrap();
    for tool in ["ssh", "scp"] {
        let p = fake.path().join(tool);
        let mark = fake.path().join(format!("{tool}.ran"));
        std::fs::write(&p, format!("#!/bin/sh\ntouch '{}'\n", mark.display())).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        fake.path().display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new("bash")
        .arg(root().join("cross/deploy.sh"))
        .args(args)
        .env("PATH", path)
        .output()
        .unwrap();
    (out, fake)
}

fn ran(fake: &tempfile::TempDir) -> bool {
    ["ssh.ran", "scp.ran"]
        .iter()
        .any(|m| fake.path().join(m).exists())
}

#[test]
fn dry_run_prints_build_copy_install_restart_and_smoke_test() {
    let (o, fake) = dry_run(&["--dry-run", "pi@raspberrypi.local"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!ran(&fake), "a command ran in --dry-run");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(lines.iter().all(|l| l.starts_with("+ ")), "{out}");
    assert!(
        lines[0].contains("cross/package.sh aarch64 --release"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("+ scp ")
            && lines[1].contains(&format!(
                "edge-bert_{}_arm64.deb pi@raspberrypi.local:/tmp/",
                env!("CARGO_PKG_VERSION")
            )),
        "{out}"
    );
    assert!(lines[2].contains("pi@raspberrypi.local") && lines[2].contains("apt-get install"));
    assert!(
        lines[3].contains("systemctl restart edge-bert.service"),
        "{out}"
    );
    assert!(
        lines[4].contains("edge-bert classify --socket /run/edge-bert/edge-bert.sock"),
        "{out}"
    );
}

#[test]
fn dry_run_with_a_given_package_for_armv7_skips_the_build() {
    let (o, fake) = dry_run(&[
        "--dry-run",
        "--arch",
        "armv7",
        "--deb",
        "/nonexistent/edge-bert_0.1.0_armhf.deb",
        "pi@pi3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!ran(&fake));
    let out = stdout(&o);
    assert!(!out.contains("package.sh"), "{out}");
    assert!(
        out.contains("edge-bert_0.1.0_armhf.deb pi@pi3:/tmp/"),
        "{out}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &[][..],
        &["--dry-run"][..],
        &["--dry-run", "--arch", "mips", "pi@x"][..],
        &["--dry-run", "pi@x;reboot"][..],
        &["--bogus", "pi@x"][..],
    ] {
        let (o, fake) = dry_run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("usage") || stderr(&o).contains("error"));
        assert!(!ran(&fake));
    }
}

#[test]
fn missing_package_is_an_error_when_not_dry() {
    let (o, fake) = dry_run(&["--deb", "/nonexistent/x.deb", "pi@x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no such package"));
    assert!(!ran(&fake));
}

/// `--model-only --dry-run`: copy into a new slot, flip `current`
/// atomically, reload (with the way back), smoke test; no package, no
/// restart, nothing run.
#[test]
fn model_only_dry_run_copies_a_slot_flips_reloads_and_can_roll_back() {
    let bundle = copy_bundle(&int8_dir());
    let dir = bundle.path().to_str().unwrap();
    let (o, fake) = dry_run(&["--dry-run", "--model-only", dir, "pi@raspberrypi.local"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!ran(&fake), "a command ran in --dry-run");
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with("+ scp -r "), "{out}");
    assert!(lines[0].contains(dir), "{out}");
    assert!(
        lines[1].contains("/var/lib/edge-bert/models/sentiment-int8-v0-"),
        "{out}"
    );
    let flip = lines[2];
    for part in [
        "PREV=$(readlink current || true)",
        "ln -sfn /var/lib/edge-bert/models/sentiment-int8-v0-",
        "mv -T current.new current",
        "edge-bert reload --socket /run/edge-bert/edge-bert.sock",
        "ln -sfn \"$PREV\" current.new",
        "exit 1",
    ] {
        assert!(flip.contains(part), "{part:?} not in {flip}");
    }
    assert!(lines[3].contains("edge-bert classify --socket"), "{out}");
    for word in ["apt-get", "restart", "package.sh"] {
        assert!(!out.contains(word), "{word} in a model-only update: {out}");
    }
    // Unsigned: said so (the board decides).
    assert!(stderr(&o).contains("not signed"), "{}", stderr(&o));
    // Not a bundle; with --deb: errors, nothing run.
    let (o, fake) = dry_run(&["--dry-run", "--model-only", "/nonexistent", "pi@x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!ran(&fake));
    let (o, _) = dry_run(&["--dry-run", "--model-only", dir, "--deb", "x.deb", "pi@x"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}
