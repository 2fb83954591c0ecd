//! `kube.pull` (BENCHMARKS.md): one pull of the largest kubelet capture, per pod. Ours: decode and
//! convert the PodList into entities (what the collector does each pull; the diff against the
//! last list is the store's, where a set equal to what it had costs a comparison and sends
//! nothing). Baseline in the same run: `serde_json::from_slice` of the same bytes into a
//! `serde_json::Value`. Target: at most 2x. `--quick` runs fewer rounds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failed unwrap is a failed run

use std::hint::black_box;
use std::time::Instant;

use wm_collector_kube::kubelet::convert_pod_list;
use wm_core::EnvFilter;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 2_000 } else { 20_000 };
    let dir = test_support::testdata::path("fixtures/kubelet");
    let (name, bytes) = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .max_by_key(|(_, b)| b.len())
        .unwrap();
    let env = EnvFilter::default();
    let converted = convert_pod_list(&bytes, &env, false).unwrap();
    let pods = converted.entities.iter().filter(|e| e.as_kubernetes_pod().is_some()).count();

    let time = |f: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..rounds {
            f();
        }
        started.elapsed().as_nanos() as f64 / rounds as f64 / pods as f64
    };
    let (mut ours, mut base) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        base = base.min(time(&|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(&bytes)).unwrap());
        }));
        ours = ours.min(time(&|| {
            black_box(convert_pod_list(black_box(&bytes), &env, false).unwrap());
        }));
    }
    let ratio = ours / base;
    let verdict = if ratio <= 2.0 { "ok" } else { "MISS" };
    println!(
        "kube.pull  {:.1} µs/pod  {:.1} µs/pod  {ratio:.2}x  <=2.00x  {verdict}  ({name}: {} bytes, {pods} pods)",
        ours / 1000.0,
        base / 1000.0,
        bytes.len()
    );
}
