//! Writes the CustomResourceDefinitions generated from the API types into `crds/yaml/` and the
//! Helm chart's `crds/` folder. `crdgen --stdout` prints them as one multi-document stream
//! instead, for `kubectl apply -f -`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use portcullis_crds::{crd_files, CHART_CRD_DIR, CRD_DIR};

fn repo_root() -> PathBuf {
    // crds/ is one level below the repository root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(stdout: bool) -> Result<(), Box<dyn std::error::Error>> {
    let files = crd_files()?;
    if stdout {
        for (_, text) in &files {
            print!("---\n{text}");
        }
        return Ok(());
    }
    let root = repo_root();
    for dir in [CRD_DIR, CHART_CRD_DIR] {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir)?;
        for (name, text) in &files {
            std::fs::write(dir.join(name), text)?;
        }
        eprintln!("wrote {} CRDs to {}", files.len(), dir.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    let stdout = std::env::args().skip(1).any(|a| a == "--stdout");
    match run(stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}
