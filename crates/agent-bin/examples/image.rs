//! `cargo xtask image`: the agent's container image, built locally with no registry and no
//! Docker: a rootfs holding only the release binary, the libraries it links, the CA certificates
//! and a `passwd` with an unprivileged default user, written as an OCI archive that `ctr images
//! import` takes (`test_support::kubernetes::agent_image`).
//!
//! Usage: `cargo run -p agent-bin --example image -- <agent binary> <output directory>` (what
//! `cargo xtask image` runs, after building the release binary). Prints the archive's path, the
//! image's name and its size.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [binary, out] = args.as_slice() else {
        eprintln!("usage: image <agent binary> <output directory>");
        return ExitCode::from(2);
    };
    match test_support::kubernetes::agent_image(binary, out) {
        Ok(image) => {
            let archive_bytes = std::fs::metadata(&image.archive).map(|m| m.len()).unwrap_or(0);
            println!("image: {}", image.name);
            println!("archive: {}", image.archive.display());
            println!(
                "layer: {:.1} MiB uncompressed, {} files:",
                image.layer_bytes as f64 / 1048576.0,
                image.files.len()
            );
            for file in &image.files {
                println!("  {file}");
            }
            println!("archive size: {:.1} MiB", archive_bytes as f64 / 1048576.0);
            println!("import: ctr -n k8s.io images import {}", image.archive.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("image: {e}");
            ExitCode::FAILURE
        }
    }
}
