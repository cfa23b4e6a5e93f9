//! The files under `deploy/` stay true to the code: every example config
//! passes its binary's `check-config`.

use std::path::Path;
use std::process::Command;

#[test]
fn every_example_config_passes_check_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        let bin = if name.starts_with("agent-") {
            "dash-agent"
        } else if name.starts_with("aggregator-") {
            "dash-aggregator"
        } else {
            panic!("{name}: name examples agent-*.toml or aggregator-*.toml");
        };
        let out = Command::new(dash_tests::process::binary(bin))
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert_eq!(checked, 3, "examples checked");
}
