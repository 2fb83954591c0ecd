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
    let configs: Vec<(&str, serde_json::Value)> = images
        .iter()
        .map(|image| (image.name, json!({ "Entrypoint": image.entrypoint, "Env": ["PATH=/bin"] })))
        .collect();
    write_archive(dir, &layer_tar, &configs, "images.tar")
}

/// Writes an OCI archive `archive_name` in `dir`: one image per `(name, config)`, all on the one
/// layer `layer_tar`.
fn write_archive(
    dir: &Path,
    layer_tar: &Path,
    images: &[(&str, serde_json::Value)],
    archive_name: &str,
) -> Result<PathBuf, Unavailable> {
    let layout = dir.join("oci-layout");
    let _ = fs::remove_dir_all(&layout);
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| Unavailable(format!("{}: {e}", blobs.display())))?;
    let (layer_digest, layer_size) = sha256(layer_tar)?;
    let layer_target = blobs.join(layer_digest.trim_start_matches("sha256:"));
    fs::copy(layer_tar, &layer_target).map_err(|e| Unavailable(format!("{}: {e}", layer_target.display())))?;
    let mut manifests = Vec::new();
    for (name, image_config) in images {
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "config": image_config,
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
        let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": { "io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag },
        }));
    }
    let index = json!({ "schemaVersion": 2, "manifests": manifests });
    fs::write(layout.join("index.json"), index.to_string()).map_err(|e| Unavailable(format!("index.json: {e}")))?;
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| Unavailable(format!("oci-layout: {e}")))?;
    let archive = dir.join(archive_name);
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

/// The agent's image name.
pub const AGENT_IMAGE: &str = "wm.local/wm-agent:dev";
/// The unprivileged user the agent's image runs as unless told otherwise.
pub const AGENT_IMAGE_USER: &str = "65532:65532";

/// What [`agent_image`] built.
#[derive(Clone, Debug)]
pub struct AgentImage {
    /// The OCI archive (`ctr images import` takes it).
    pub archive: PathBuf,
    /// The image's name ([`AGENT_IMAGE`]).
    pub name: &'static str,
    /// The uncompressed size of its one layer, in bytes.
    pub layer_bytes: u64,
    /// What the layer holds, one path a line.
    pub files: Vec<String>,
}

fn copy_into(root: &Path, from: &Path, to: &Path, mode: u32) -> Result<(), Unavailable> {
    use std::os::unix::fs::PermissionsExt as _;
    let target = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| Unavailable(format!("{}: {e}", parent.display())))?;
    }
    fs::copy(from, &target).map_err(|e| Unavailable(format!("{} -> {}: {e}", from.display(), target.display())))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))
        .map_err(|e| Unavailable(format!("{}: {e}", target.display())))
}

/// The shared libraries `binary` loads, as `ldd` resolves them (the loader included).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, Unavailable> {
    let out = Command::new("ldd").arg(binary).output().map_err(|e| Unavailable(format!("ldd: {e}")))?;
    check("ldd", &out)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// Builds the agent's container image from `binary` in `dir`: a rootfs holding only the binary
/// (`/usr/local/bin/agent`, without its debug info), the libraries it links (from `ldd`), the CA certificates, and a
/// `passwd` with root and the unprivileged user it runs as by default ([`AGENT_IMAGE_USER`]);
/// its entrypoint is `agent`, its command `run`. No registry, no Docker: `tar` and JSON.
pub fn agent_image(binary: &Path, dir: &Path) -> Result<AgentImage, Unavailable> {
    let _ = fs::remove_dir_all(dir);
    let root = dir.join("rootfs");
    fs::create_dir_all(&root).map_err(|e| Unavailable(format!("{}: {e}", root.display())))?;
    copy_into(&root, binary, Path::new("/usr/local/bin/agent"), 0o755)?;
    // Its debug info stays out (symbols stay, for backtraces): a fifth of the size.
    let out = Command::new("strip")
        .arg("--strip-debug")
        .arg(root.join("usr/local/bin/agent"))
        .output()
        .map_err(|e| Unavailable(format!("strip: {e}")))?;
    check("strip --strip-debug", &out)?;
    for library in shared_libraries(binary)? {
        copy_into(&root, &library, &library, 0o755)?;
    }
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        copy_into(&root, ca, ca, 0o644)?;
    }
    let text = |path: &str, body: &str| {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| Unavailable(format!("{}: {e}", parent.display())))?;
        }
        fs::write(&target, body).map_err(|e| Unavailable(format!("{}: {e}", target.display())))
    };
    text(
        "etc/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    )?;
    text("etc/group", "root:x:0:\nnonroot:x:65532:\n")?;
    for empty in ["etc/wm-agent", "tmp", "var/run", "home/nonroot"] {
        fs::create_dir_all(root.join(empty)).map_err(|e| Unavailable(format!("{empty}: {e}")))?;
    }
    let layer = dir.join("layer.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .args(["--owner=0", "--group=0", "--numeric-owner", "--sort=name", "--mtime=@0", "-cf"])
        .arg(&layer)
        .arg(".")
        .output()
        .map_err(|e| Unavailable(format!("tar: {e}")))?;
    check("tar (agent layer)", &out)?;
    let listing = Command::new("tar").arg("-tf").arg(&layer).output().map_err(|e| Unavailable(format!("tar: {e}")))?;
    check("tar -t", &listing)?;
    let files = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| l.trim_start_matches("./").to_owned())
        .collect();
    let layer_bytes = fs::metadata(&layer).map_err(|e| Unavailable(format!("{}: {e}", layer.display())))?.len();
    let config = json!({
        "Entrypoint": ["/usr/local/bin/agent"],
        "Cmd": ["run"],
        "User": AGENT_IMAGE_USER,
        "Env": ["PATH=/usr/local/bin"],
        "WorkingDir": "/",
        "Labels": { "org.opencontainers.image.title": "wm-agent" },
    });
    let archive = write_archive(dir, &layer, &[(AGENT_IMAGE, config)], "wm-agent-image.tar")?;
    let _ = fs::remove_dir_all(&root);
    Ok(AgentImage { archive, name: AGENT_IMAGE, layer_bytes, files })
}
