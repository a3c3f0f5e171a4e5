//! Writes everything generated from the Rust types: the CRD YAML under `crds/`, the
//! chart's CRD templates and `docs/crd-reference.md`.
//! `crdgen --check` exits non-zero when a file differs (for scripts).

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut drifted = false;
    for (path, want) in switchboard_crds::generated::files() {
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have == want {
            continue;
        }
        if check {
            eprintln!("{} is out of date", path.display());
            drifted = true;
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            }
            std::fs::write(&path, want).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            eprintln!("wrote {}", path.display());
        }
    }
    if drifted { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
