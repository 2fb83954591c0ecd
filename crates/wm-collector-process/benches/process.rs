//! `process.scan` and `process.rss` of BENCHMARKS.md, on this machine's real `/proc` with 5,000
//! sleeping processes the bench starts (not a copied tree: a copy would not have the `exe` links
//! or the kernel's cost of generating each file).
//!
//! - `process.scan`: one scan of `/proc` by the collector's `Scanner` when every process is
//!   known (what each pull costs on a quiet node), against reading every process's `stat` and
//!   `cgroup` into memory and its `exe` link, with no parsing. Target ≤ 2×. Allocations per scan
//!   are counted by a counting allocator. `process.scan_cold` is the first scan, which also reads
//!   each process's `status`, `cmdline` and, for programs no name rule knows, `maps` and the
//!   executable's ELF headers; shown against the same baseline, for information.
//! - `process.rss`: the heap bytes the store and the collector hold per tracked process, from a
//!   store with the process collector after its first pull, against the same store before.
//!   Target ≤ 512 B.

#![allow(clippy::unwrap_used, clippy::expect_used)] // bench code: a failure aborts the run

use std::alloc::System;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use wm_collector_process::scan::Scanner;
use wm_collector_process::{ProcessCollector, ProcessConfig};
use wm_core::Seconds;
use wm_store::Store;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes allocated and not freed since `region` began (stats_alloc counts a realloc's
/// growth in `bytes_allocated` and its shrinking in `bytes_deallocated` already).
fn net(region: &Region<'_, System>) -> isize {
    let stats = region.change();
    stats.bytes_allocated as isize - stats.bytes_deallocated as isize
}

/// Reads every process's `stat` and `cgroup` and its `exe` link, parsing nothing; the number of
/// processes read.
fn baseline(proc_root: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(proc_root).unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let dir = entry.path();
        let stat = std::fs::read(dir.join("stat"));
        let cgroup = std::fs::read(dir.join("cgroup"));
        let exe = std::fs::read_link(dir.join("exe"));
        if stat.is_ok() {
            count += 1;
        }
        let _ = std::hint::black_box((stat, cgroup, exe));
    }
    count
}

/// Returns the fastest of `rounds` runs of `f`, and the allocations of the last one.
fn best(rounds: usize, mut f: impl FnMut()) -> (Duration, usize) {
    let mut fastest = Duration::MAX;
    let mut allocations = 0;
    for _ in 0..rounds {
        let region = Region::new(GLOBAL);
        let t = Instant::now();
        f();
        fastest = fastest.min(t.elapsed());
        let stats = region.change();
        allocations = stats.allocations + stats.reallocations;
    }
    (fastest, allocations)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (sleepers, rounds) = if quick { (1000, 3) } else { (5000, 7) };
    let proc_root = Path::new("/proc");
    let t = Instant::now();
    let mut children: Vec<Child> =
        (0..sleepers).map(|_| Command::new("sleep").arg("600").stdin(Stdio::null()).spawn().unwrap()).collect();
    let processes = baseline(proc_root);
    eprintln!("started {sleepers} sleeping processes in {:?}; /proc has {processes}", t.elapsed());

    let (cold, cold_allocs) = best(rounds, || {
        let mut scanner = Scanner::new(proc_root, Vec::new(), None);
        std::hint::black_box(scanner.scan().unwrap());
    });
    let mut scanner = Scanner::new(proc_root, Vec::new(), None);
    scanner.scan().unwrap();
    let (steady, steady_allocs) = best(rounds, || {
        let changes = scanner.scan().unwrap();
        std::hint::black_box(changes);
    });
    let (base, base_allocs) = best(rounds, || {
        std::hint::black_box(baseline(proc_root));
    });
    let ratio = steady.as_secs_f64() / base.as_secs_f64();
    let verdict = if ratio <= 2.0 { "ok" } else { "MISS" };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "process.scan  {:.1} ms  {:.1} ms  {ratio:.2}x  <=2.00x  {verdict}  ({processes} processes, all known; {steady_allocs} allocations vs {base_allocs}; best of {rounds})",
        ms(steady),
        ms(base)
    );
    let cold_ratio = cold.as_secs_f64() / base.as_secs_f64();
    println!(
        "process.scan_cold  {:.1} ms  {:.1} ms  {cold_ratio:.2}x  -  info  (the first scan: every process new; {cold_allocs} allocations)",
        ms(cold),
        ms(base)
    );

    // process.rss: heap bytes per tracked process, in the store and the collector.
    let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    tokio.block_on(async {
        let region = Region::new(GLOBAL);
        let config = ProcessConfig { process_collection: true, interval: Seconds(3600), ..ProcessConfig::default() };
        let store = Store::builder().collector(ProcessCollector::new(config).into_collector()).build();
        store.start();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tracked = 0;
        while Instant::now() < deadline {
            tracked = store.list_processes().len();
            if tracked >= sleepers {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Let the list above and any event still queued be freed.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let held = net(&region);
        let per = held as f64 / tracked as f64;
        let verdict = if per <= 512.0 { "ok" } else { "MISS" };
        println!(
            "process.rss  {per:.0} B  -  -  <=512 B  {verdict}  ({tracked} processes tracked, {held} heap bytes held)"
        );
        store.shutdown().await;
    });
    for child in &mut children {
        let _ = child.kill();
    }
    for child in &mut children {
        let _ = child.wait();
    }
}
