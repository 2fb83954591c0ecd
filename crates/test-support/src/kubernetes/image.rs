//! Local images for the cluster (no registry is reachable): OCI image archives built from a
//! busybox rootfs, imported into containerd's `k8s.io` namespace with `ctr images import`. One is
//! the pod sandbox (its process only sleeps, as `pause` does), one runs the test workloads.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::runtimes::{Unavailable, build_rootfs_tar, check};

/// An image to build: its name and the command it runs.
pub(crate) struct ImageSpec {
    pub(crate) name: &'static str,
    pub(crate) entrypoint: &'static [&'static str],
}

fn sha256(path: &Path) -> Result<(String, u64), Unavailable> {
    let out = Command::new("sha256sum").arg(path).output().map_err(|e| Unavailable(format!("sha256sum: {e}")))?;
    check("sha256sum", &out)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text.split_whitespace().next().unwrap_or_default().to_owned();
    let size = fs::metadata(path).map_err(|e| Unavailable(format!("{}: {e}", path.display())))?.len();
    Ok((format!("sha256:{digest}"), size))
}

/// Writes `bytes` as a blob of the layout; returns its descriptor's digest and size.
fn blob(layout: &Path, bytes: &[u8]) -> Result<(String, u64), Unavailable> {
    let tmp = layout.join("blob.tmp");
    fs::write(&tmp, bytes).map_err(|e| Unavailable(format!("{}: {e}", tmp.display())))?;
    let (digest, size) = sha256(&tmp)?;
    let target = layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    fs::rename(&tmp, &target).map_err(|e| Unavailable(format!("{}: {e}", target.display())))?;
    Ok((digest, size))
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds one OCI archive holding `images` (one shared busybox layer) in `dir`.
pub(crate) fn build_archive(dir: &Path, images: &[ImageSpec]) -> Result<PathBuf, Unavailable> {
    let layer_tar = build_rootfs_tar(dir)?;
    let layout = dir.join("oci-layout");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| Unavailable(format!("{}: {e}", blobs.display())))?;
    let (layer_digest, layer_size) = sha256(&layer_tar)?;
    let layer_target = blobs.join(layer_digest.trim_start_matches("sha256:"));
    fs::copy(&layer_tar, &layer_target).map_err(|e| Unavailable(format!("{}: {e}", layer_target.display())))?;
    let mut manifests = Vec::new();
    for image in images {
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": { "Entrypoint": image.entrypoint, "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        });
        let (config_digest, config_size) = blob(&layout, config.to_string().as_bytes())?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size }],
        });
        let (manifest_digest, manifest_size) = blob(&layout, manifest.to_string().as_bytes())?;
        let tag = image.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "io.containerd.image.name": image.name, "org.opencontainers.image.ref.name": tag },
        }));
    }
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    fs::write(layout.join("index.json"), index.to_string()).map_err(|e| Unavailable(format!("index.json: {e}")))?;
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Unavailable(format!("oci-layout: {e}")))?;
    let archive = dir.join("images.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .map_err(|e| Unavailable(format!("tar: {e}")))?;
    check("tar (OCI archive)", &out)?;
    Ok(archive)
}
