//! Writes the CRD YAML under `crds/` from the Rust types.
//! `crdgen --check` exits non-zero when a file differs (for scripts).

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let dir = switchboard_crds::yaml_dir();
    let mut drifted = false;
    for (file, crd) in switchboard_crds::all() {
        let path = dir.join(file);
        let want = switchboard_crds::to_yaml(&crd);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            continue;
        }
        if check {
            eprintln!("{} is out of date", path.display());
            drifted = true;
        } else {
            std::fs::write(&path, want).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            eprintln!("wrote {}", path.display());
        }
    }
    if drifted { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
