//! Builds the Kubernetes components from their published Go modules, once per version, into
//! `~/.cache/wm-k8s/<version>/bin`.
//!
//! `k8s.io/kubernetes` cannot be `go install`ed: its `go.mod` maps every `k8s.io/*` staging
//! module to a directory of its own tree (`replace k8s.io/api => ./staging/src/k8s.io/api`). So a
//! small module of ours requires it and maps each staging module to its published version
//! (`k8s.io/api v0.37.2` for Kubernetes v1.37.2), read from that `go.mod`; then `go build` makes
//! `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, `kubelet` and `kubectl`, with the version
//! stamped in as the
//! release build does. etcd gets a module of its own (its server library and a two-line main), so
//! the two dependency graphs never meet. The Go module and build caches live beside the binaries,
//! outside any clone. A build goes to a fresh directory that is renamed into place at the end: an
//! interrupted build leaves nothing that looks finished.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::runtimes::{Install, Unavailable};

/// The Kubernetes release the cluster runs: the newest served whose kubelet runs on Debian's
/// containerd 1.6 (it falls back to its own cgroup driver setting when the runtime lacks the
/// `RuntimeConfig` call, until 1.38) and on cgroup v1 hosts (with `failCgroupV1: false`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The etcd server module's release.
pub const ETCD_VERSION: &str = "v3.7.3";
/// The binaries the cluster needs.
/// The binaries the cluster needs, and `kubectl` (the deploy commands of the README run with it).
pub const BINARIES: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl"];

/// Where everything Go-related is cached: `$WM_K8S_CACHE`, else `~/.cache/wm-k8s`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("WM_K8S_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("wm-k8s")
}

/// The directory of this version's binaries.
pub fn bin_dir() -> PathBuf {
    cache_root().join(format!("{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}")).join("bin")
}

pub(super) fn go() -> Result<PathBuf, Unavailable> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("go")).collect::<Vec<_>>())
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/local/go/bin/go")])
        .find(|p| p.is_file())
        .ok_or_else(|| Unavailable("go is not installed (the Kubernetes components are built with it)".into()))
}

pub(super) fn go_command(go: &Path, dir: &Path) -> Command {
    let root = cache_root();
    let mut cmd = Command::new(go);
    cmd.current_dir(dir)
        .env("GOMODCACHE", root.join("go/mod"))
        .env("GOCACHE", root.join("go/build"))
        .env("GOPATH", root.join("go/path"))
        .env("GOFLAGS", "-mod=mod")
        // The machine's own Go: never download another toolchain.
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0");
    cmd
}

pub(super) fn run(what: &str, mut cmd: Command) -> Result<String, Unavailable> {
    let out = cmd.output().map_err(|e| Unavailable(format!("{what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(Unavailable(format!("{what} failed ({}):\n{}", out.status, tail.join("\n"))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The staging modules `k8s.io/kubernetes`'s own `go.mod` maps into its tree.
pub fn staging_modules(kubernetes_go_mod: &str) -> Vec<String> {
    kubernetes_go_mod
        .lines()
        .filter_map(|line| {
            let (module, target) = line.trim().split_once("=>")?;
            target.trim().starts_with("./staging/").then(|| module.trim().to_owned())
        })
        .collect()
}

/// The `go.mod` of our module requiring Kubernetes at `version`.
pub fn kubernetes_module(version: &str, staging: &[String]) -> String {
    // Staging modules are published as v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>.
    let staging_version = version.replacen("v1.", "v0.", 1);
    let mut out =
        format!("module wm.local/k8s-build\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes {version}\n\nreplace (\n");
    for module in staging {
        out.push_str(&format!("\t{module} => {module} {staging_version}\n"));
    }
    out.push_str(")\n");
    out
}

/// Makes `dir` a module of ours requiring Kubernetes at [`KUBERNETES_VERSION`] with its staging
/// modules mapped to their published versions; returns the `-X` flags that stamp the version in,
/// as the release build does.
fn kubernetes_build_module(go: &Path, dir: &Path) -> Result<String, Unavailable> {
    let mut download = go_command(go, dir);
    download.args(["mod", "download", "-json", &format!("k8s.io/kubernetes@{KUBERNETES_VERSION}")]);
    let info = run("go mod download k8s.io/kubernetes", download)?;
    let info: serde_json::Value =
        serde_json::from_str(&info).map_err(|e| Unavailable(format!("go mod download printed {info}: {e}")))?;
    let go_mod_path =
        info["GoMod"].as_str().ok_or_else(|| Unavailable(format!("go mod download printed no GoMod path: {info}")))?;
    let upstream = fs::read_to_string(go_mod_path).map_err(|e| Unavailable(format!("{go_mod_path}: {e}")))?;
    let staging = staging_modules(&upstream);
    if staging.is_empty() {
        return Err(Unavailable("k8s.io/kubernetes's go.mod maps no staging module: cannot build it".into()));
    }
    fs::write(dir.join("go.mod"), kubernetes_module(KUBERNETES_VERSION, &staging))
        .map_err(|e| Unavailable(format!("go.mod: {e}")))?;
    let minor = KUBERNETES_VERSION.trim_start_matches("v1.").split('.').next().unwrap_or("0");
    Ok(["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"]
        .iter()
        .map(|pkg| {
            format!(
                "-X {pkg}.gitVersion={KUBERNETES_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} \
                 -X {pkg}.gitTreeState=clean -X {pkg}.buildDate=1970-01-01T00:00:00Z"
            )
        })
        .collect::<Vec<_>>()
        .join(" "))
}

/// Holds the cache's build lock until dropped, waiting while another process (a test binary
/// running beside this one) holds it; it is let go when its holder exits, however it exits.
///
/// Without it two test binaries that started on a fresh machine each built Kubernetes at once,
/// which on two cores took each of them twice as long. One lock for every Go build, not one per
/// program: the builds share Go's build cache, so the second of two (kube-proxy after the
/// cluster's components) reuses the packages the first compiled.
fn build_lock() -> Result<fs::File, Unavailable> {
    let dir = cache_root();
    fs::create_dir_all(&dir).map_err(|e| Unavailable(format!("{}: {e}", dir.display())))?;
    let path = dir.join("build.lock");
    let file = fs::File::create(&path).map_err(|e| Unavailable(format!("{}: {e}", path.display())))?;
    file.lock().map_err(|e| Unavailable(format!("lock {}: {e}", path.display())))?;
    Ok(file)
}

/// Finds the cached `binary`, else (when `install` allows) builds it: `build(go, work)` leaves a
/// file of `binary`'s name in `work`, a fresh directory beside it, which is renamed into place in
/// one step, so an interrupted build leaves nothing that looks finished. One process builds at a
/// time ([`build_lock`]); the others wait and find it built. Prints how long the build took.
pub(super) fn ensure_built(
    what: &str,
    binary: &Path,
    install: Install,
    build: impl FnOnce(&Path, &Path) -> Result<(), Unavailable>,
) -> Result<PathBuf, Unavailable> {
    if binary.is_file() {
        return Ok(binary.to_path_buf());
    }
    if install == Install::Never {
        return Err(Unavailable(format!("{what} is not built in {}", binary.display())));
    }
    let go = go()?;
    let name = binary.file_name().ok_or_else(|| Unavailable(format!("{} names no file", binary.display())))?;
    let dir = binary.parent().map(Path::to_path_buf).unwrap_or_else(cache_root);
    let _lock = build_lock()?;
    if binary.is_file() {
        return Ok(binary.to_path_buf());
    }
    let work = dir.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| Unavailable(format!("{}: {e}", work.display())))?;
    let started = Instant::now();
    println!("{what}: building with {} (cached afterwards)", go.display());
    build(&go, &work)?;
    if fs::rename(work.join(name), binary).is_err() && !binary.is_file() {
        return Err(Unavailable(format!("cannot move {what} into {}", binary.display())));
    }
    let _ = fs::remove_dir_all(&work);
    println!("{what}: built in {:.0?}", started.elapsed());
    Ok(binary.to_path_buf())
}

/// Where kube-proxy is cached (built apart from [`BINARIES`]: only the tests that route a
/// Service need it, and adding it there would rebuild every cached set).
pub fn kube_proxy_binary() -> PathBuf {
    cache_root().join(format!("kube-proxy-{KUBERNETES_VERSION}")).join("kube-proxy")
}

/// Finds kube-proxy, building `k8s.io/kubernetes/cmd/kube-proxy` when missing and `install`
/// allows (in the same kind of module as the other components).
pub fn ensure_kube_proxy(install: Install) -> Result<PathBuf, Unavailable> {
    ensure_built(&format!("kube-proxy {KUBERNETES_VERSION}"), &kube_proxy_binary(), install, |go, work| {
        let stamp = kubernetes_build_module(go, work)?;
        let mut build = go_command(go, work);
        build.args(["build", "-trimpath", "-ldflags", &format!("-s -w {stamp}"), "-o", "kube-proxy"]);
        build.arg("k8s.io/kubernetes/cmd/kube-proxy");
        run("go build (kube-proxy)", build).map(drop)
    })
}

/// Finds the binaries, building the missing ones (minutes on a fresh machine; printed).
pub fn ensure_binaries() -> Result<PathBuf, Unavailable> {
    let bin = bin_dir();
    if BINARIES.iter().all(|b| bin.join(b).is_file()) {
        return Ok(bin);
    }
    let go = go()?;
    let version_dir = bin.parent().map(Path::to_path_buf).unwrap_or_else(cache_root);
    let _lock = build_lock()?;
    if BINARIES.iter().all(|b| bin.join(b).is_file()) {
        return Ok(bin);
    }
    let work = version_dir.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let out = work.join("bin");
    let k8s = work.join("k8s");
    let etcd = work.join("etcd");
    for dir in [&out, &k8s, &etcd] {
        fs::create_dir_all(dir).map_err(|e| Unavailable(format!("{}: {e}", dir.display())))?;
    }
    let started = Instant::now();
    println!(
        "kubernetes: building {} and etcd {ETCD_VERSION} with {} (cached afterwards)",
        KUBERNETES_VERSION,
        go.display()
    );

    let stamp = kubernetes_build_module(&go, &k8s)?;
    let mut build = go_command(&go, &k8s);
    build.args(["build", "-trimpath", "-ldflags", &format!("-s -w {stamp}"), "-o"]).arg(&out).args([
        "k8s.io/kubernetes/cmd/kube-apiserver",
        "k8s.io/kubernetes/cmd/kube-controller-manager",
        "k8s.io/kubernetes/cmd/kube-scheduler",
        "k8s.io/kubernetes/cmd/kubelet",
        "k8s.io/kubernetes/cmd/kubectl",
    ]);
    run("go build (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl)", build)?;
    println!("kubernetes: {KUBERNETES_VERSION} built in {:.0?}", started.elapsed());

    // etcd: its server library and a main of ours.
    let etcd_started = Instant::now();
    fs::write(
        etcd.join("go.mod"),
        format!("module wm.local/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"),
    )
    .map_err(|e| Unavailable(format!("etcd go.mod: {e}")))?;
    fs::write(
        etcd.join("main.go"),
        "package main\n\nimport (\n\t\"os\"\n\n\t\"go.etcd.io/etcd/server/v3/etcdmain\"\n)\n\n\
         func main() { etcdmain.Main(os.Args) }\n",
    )
    .map_err(|e| Unavailable(format!("etcd main.go: {e}")))?;
    let mut tidy = go_command(&go, &etcd);
    tidy.args(["mod", "tidy"]);
    run("go mod tidy (etcd)", tidy)?;
    let mut build = go_command(&go, &etcd);
    build.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"]).arg(out.join("etcd")).arg(".");
    run("go build (etcd)", build)?;
    println!("kubernetes: etcd {ETCD_VERSION} built in {:.0?}", etcd_started.elapsed());

    // Into place in one rename; a concurrent build that finished first wins. An older set (one
    // binary short) is replaced.
    if bin.is_dir() && !BINARIES.iter().all(|b| bin.join(b).is_file()) {
        let _ = fs::remove_dir_all(&bin);
    }
    if !bin.is_dir() && fs::rename(&out, &bin).is_err() && !bin.is_dir() {
        return Err(Unavailable(format!("cannot move the binaries into {}", bin.display())));
    }
    let _ = fs::remove_dir_all(&work);
    println!("kubernetes: binaries ready in {} ({:.0?} in all)", bin.display(), started.elapsed());
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_modules_are_mapped_to_their_published_versions() {
        let upstream = "module k8s.io/kubernetes\n\nreplace (\n\tk8s.io/api => ./staging/src/k8s.io/api\n\
                        \tk8s.io/client-go => ./staging/src/k8s.io/client-go\n\tgithub.com/x/y => github.com/x/y v1.0.0\n)\n";
        let staging = staging_modules(upstream);
        assert_eq!(staging, ["k8s.io/api", "k8s.io/client-go"]);
        let ours = kubernetes_module("v1.37.2", &staging);
        assert!(ours.contains("require k8s.io/kubernetes v1.37.2\n"), "{ours}");
        assert!(ours.contains("\tk8s.io/api => k8s.io/api v0.37.2\n"), "{ours}");
        assert!(ours.contains("\tk8s.io/client-go => k8s.io/client-go v0.37.2\n"), "{ours}");
        assert!(!ours.contains("github.com/x/y"));
    }
}
