//! Scans `/proc` and compares what it finds with the scan before.
//!
//! A scan lists the numeric directories of `/proc` and reads each one's `stat`, which gives the
//! parent, the command name and the start time. A process the scan before already had (same pid,
//! same start time) costs only that one read. A new one also costs reads of `status` (its pid in
//! its own namespace), `cgroup` (its container), `cmdline` and, for a program whose name is not a
//! known interpreter, the ELF section headers of its executable (Go) and its memory map (.NET). Processes that start
//! and end between two scans are never seen: this is a sampler, not an event stream.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use wm_core::{EntityArc, EntityId, IStr, Kind, Process, Timestamp};

use crate::language;
use crate::scrub::Scrubber;

/// What one scan found changed since the scan before.
#[derive(Debug, Default)]
pub struct Changes {
    /// Processes that are new, or whose parent or name changed.
    pub set: Vec<EntityArc<Process>>,
    /// Processes that are gone.
    pub unset: Vec<EntityId>,
}

/// What a scan keeps about one process to compare the next scan with.
#[derive(Debug)]
struct Known {
    /// The start time in clock ticks since boot: a pid with another start time is another
    /// process.
    start_ticks: u64,
    /// The entity as last sent.
    process: EntityArc<Process>,
}

/// What `stat` tells about a process.
#[derive(Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command name, between the parentheses.
    pub comm: String,
    /// The parent's pid.
    pub ppid: i32,
    /// The start time, in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses the text of `/proc/<pid>/stat`, or gives `None` when it is not of that form.
///
/// The command name may hold spaces and parentheses, so it runs from the first `(` to the last
/// `)`; the fields after it are counted from there (`state ppid … starttime`, starttime being the
/// 22nd field of the line).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let mut fields = text.get(close + 1..)?.split_ascii_whitespace();
    // After the name: state (3), ppid (4), then 17 more up to starttime (22).
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_ticks = fields.nth(17)?.parse().ok()?;
    Some(Stat { comm, ppid, start_ticks })
}

/// Returns the pid in the innermost pid namespace, the last number of the `NSpid:` line of
/// `/proc/<pid>/status`; `None` when the line is missing (kernels before 4.1).
pub fn parse_ns_pid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .and_then(|pids| pids.split_whitespace().last()?.parse().ok())
}

/// Returns the boot time from the `btime` line of `/proc/stat`, in seconds since the epoch.
pub fn parse_boot_time(stat: &str) -> Option<i64> {
    stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|t| t.trim().parse().ok())
}

/// Clock ticks per second in `/proc/<pid>/stat`: `USER_HZ`, which Linux fixes at 100 on every
/// architecture it exports to user space (the kernel converts its own tick rate to it).
const TICKS_PER_SECOND: u64 = 100;

/// Scans one `/proc` and remembers what it found, to report only changes the next time.
#[derive(Debug)]
pub struct Scanner {
    proc_root: PathBuf,
    boot_time: Option<i64>,
    containerd_namespaces: Vec<String>,
    scrubber: Option<Scrubber>,
    known: HashMap<i32, Known>,
    /// The language of each executable seen, by device and inode (see `binary_language`).
    binaries: HashMap<(u64, u64), Option<wm_core::Language>>,
}

impl Scanner {
    /// Creates a scanner of `proc_root`. Command lines are kept, scrubbed, only when `scrubber`
    /// is given. `containerd_namespaces` name the namespaces whose cgroup paths hold container
    /// names that are not hex ids (containerd's cgroupfs layout).
    pub fn new(proc_root: &Path, containerd_namespaces: Vec<String>, scrubber: Option<Scrubber>) -> Self {
        Self {
            proc_root: proc_root.to_owned(),
            boot_time: None,
            containerd_namespaces,
            scrubber,
            known: HashMap::new(),
            binaries: HashMap::new(),
        }
    }

    /// Counts the processes the last scan found.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Tells whether the last scan found no process.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Forgets every process, so that the next scan reports them all as new.
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// Returns every process the last scan found.
    pub fn processes(&self) -> impl Iterator<Item = &EntityArc<Process>> {
        self.known.values().map(|k| &k.process)
    }

    /// Scans `/proc` once and returns what changed since the scan before.
    ///
    /// # Errors
    ///
    /// Returns the error of listing `/proc` itself. A process that exits during the scan, or
    /// whose files cannot be read, is skipped (and, if it was known, reported gone).
    pub fn scan(&mut self) -> std::io::Result<Changes> {
        if self.boot_time.is_none() {
            self.boot_time =
                std::fs::read_to_string(self.proc_root.join("stat")).ok().as_deref().and_then(parse_boot_time);
        }
        let mut changes = Changes::default();
        let mut seen = HashMap::with_capacity(self.known.len());
        let mut path = self.proc_root.clone();
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.proc_root)? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = pid_of(&entry.file_name()) else { continue };
            path.push(entry.file_name());
            path.push("stat");
            let stat = read_into(&path, &mut text).then(|| parse_stat(&text)).flatten();
            path.pop();
            if let Some(stat) = stat {
                let known = self.known.remove(&pid).filter(|k| k.start_ticks == stat.start_ticks);
                let known = match known {
                    Some(k) if k.process.ppid == stat.ppid && *k.process.name == stat.comm => k,
                    Some(k) if *k.process.name == stat.comm => {
                        // Reparented (its parent exited): same process, new parent.
                        let mut process = (*k.process).clone();
                        process.ppid = stat.ppid;
                        let process = EntityArc::new(process);
                        changes.set.push(process.clone());
                        Known { start_ticks: k.start_ticks, process }
                    }
                    // A new command name means a new program, most often an exec (a launcher
                    // such as pyenv's shim running the real interpreter): read it all again.
                    _ => {
                        let process = EntityArc::new(self.read_new(pid, &stat, &mut path, &mut text));
                        changes.set.push(process.clone());
                        Known { start_ticks: stat.start_ticks, process }
                    }
                };
                seen.insert(pid, known);
            }
            path.pop();
        }
        // What is left of the last scan is gone (or now unreadable, which is the same to us).
        changes.unset = self.known.drain().map(|(_, k)| EntityId::new(Kind::Process, k.process.id.clone())).collect();
        self.known = seen;
        Ok(changes)
    }

    /// Reads what a new process's other files tell; `path` is its directory.
    fn read_new(&mut self, pid: i32, stat: &Stat, path: &mut PathBuf, text: &mut String) -> Process {
        path.push("status");
        let ns_pid = read_into(path, text).then(|| parse_ns_pid(text)).flatten().unwrap_or(pid);
        path.pop();
        path.push("cgroup");
        let namespaces: Vec<&str> = self.containerd_namespaces.iter().map(String::as_str).collect();
        let container_id = read_into(path, text)
            .then(|| wm_core::cgroup::container_id_from_proc_cgroup(text, &namespaces).map(IStr::from))
            .flatten()
            .unwrap_or_default();
        path.pop();
        path.push("cmdline");
        let argv: Vec<String> = read_bounded(path, MAX_CMDLINE)
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        path.pop();
        let language = language::from_command(&stat.comm, &argv).or_else(|| self.binary_language(path));
        let cmdline = match &self.scrubber {
            Some(scrubber) => scrubber.scrub(argv),
            None => Vec::new(),
        };
        let creation_time = self.boot_time.map(|boot| {
            let ticks = stat.start_ticks;
            let secs = boot.saturating_add(i64::try_from(ticks / TICKS_PER_SECOND).unwrap_or(i64::MAX));
            let nanos = i32::try_from((ticks % TICKS_PER_SECOND) * (1_000_000_000 / TICKS_PER_SECOND)).unwrap_or(0);
            Timestamp::from_unix(secs, nanos)
        });
        Process {
            id: pid.to_string().into(),
            pid,
            ns_pid,
            ppid: stat.ppid,
            name: IStr::from(stat.comm.as_str()),
            creation_time,
            container_id,
            language,
            cmdline,
        }
    }
}

impl Scanner {
    /// Returns the language the executable and memory map of the process at `dir` show
    /// ([`language::from_binary`]), remembered per executable file (device and inode): every
    /// process of one binary gives the same answer, as upstream's cache also assumes, and the
    /// ELF headers and the map are read once per binary rather than once per process.
    fn binary_language(&mut self, dir: &Path) -> Option<wm_core::Language> {
        use std::os::unix::fs::MetadataExt;
        let exe = dir.join("exe");
        let Ok(meta) = std::fs::metadata(&exe) else { return None };
        let key = (meta.dev(), meta.ino());
        if let Some(language) = self.binaries.get(&key) {
            return *language;
        }
        let language = language::from_binary(&exe, &dir.join("maps"));
        if self.binaries.len() >= MAX_BINARIES {
            self.binaries.clear();
        }
        self.binaries.insert(key, language);
        language
    }
}

/// The most executables whose language is remembered; past it the memory starts again empty.
const MAX_BINARIES: usize = 1000;

/// Returns the pid a `/proc` entry's name gives, or `None` for the other entries.
fn pid_of(name: &OsStr) -> Option<i32> {
    let name = name.to_str()?;
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|pid| *pid > 0)
}

/// The most bytes read from one small `/proc` file (`stat`, `status`, `cgroup`).
const MAX_SMALL_FILE: u64 = 64 * 1024;

/// The most bytes read of one command line: enough for the program and the 64 arguments of at
/// most 1 KiB that are kept, where Linux allows megabytes.
const MAX_CMDLINE: u64 = 128 * 1024;

/// Reads at most `limit` bytes of the file at `path`.
fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads the file at `path` into `text`, replacing what it held, up to [`MAX_SMALL_FILE`]
/// bytes; tells whether it could.
fn read_into(path: &Path, text: &mut String) -> bool {
    use std::io::Read;
    text.clear();
    std::fs::File::open(path).and_then(|f| f.take(MAX_SMALL_FILE).read_to_string(text)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_even_with_odd_command_names() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_stat(line), Some(Stat { comm: "my (odd) name".into(), ppid: 1, start_ticks: 98765 }));
        let spaces = "7 (a b c) R 3 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42 0 0";
        assert_eq!(parse_stat(spaces).map(|s| (s.comm, s.ppid, s.start_ticks)), Some(("a b c".into(), 3, 42)));
        for bad in ["", "1234", "1234 (x", "1234 (x) S", "1 (x) S notanumber 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 42"] {
            assert_eq!(parse_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_innermost_namespace_pid_is_the_last_of_nspid() {
        assert_eq!(parse_ns_pid("Name:\tsleep\nNSpid:\t4242\t1\nPPid:\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("Name:\tinit\nNSpid:\t1\n"), Some(1));
        assert_eq!(parse_ns_pid("Name:\told kernel\n"), None);
        assert_eq!(parse_boot_time("cpu 1 2 3\nbtime 1733400000\nprocesses 9\n"), Some(1_733_400_000));
    }

    #[test]
    fn only_numeric_entries_are_processes() {
        for (name, pid) in
            [("1", Some(1)), ("4242", Some(4242)), ("self", None), ("0", None), ("", None), ("12a", None)]
        {
            assert_eq!(pid_of(OsStr::new(name)), pid, "{name:?}");
        }
    }

    /// Scans this machine's real `/proc`: this test's own process is there, with its parent and
    /// name, and a child started after the first scan is reported new, then gone once reaped.
    #[test]
    fn a_real_proc_scan_reports_a_child_start_and_exit() {
        let mut scanner = Scanner::new(Path::new("/proc"), Vec::new(), None);
        let first = scanner.scan().unwrap_or_else(|e| panic!("{e}"));
        let me = std::process::id().to_string();
        let own = first.set.iter().find(|p| *p.id == *me).unwrap_or_else(|| panic!("pid {me} in the scan"));
        assert_eq!(own.pid.to_string(), me);
        assert!(own.creation_time.is_some() && own.ppid > 0);
        assert!(first.unset.is_empty());

        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap_or_else(|e| panic!("{e}"));
        let pid = child.id().to_string();
        let second = scanner.scan().unwrap_or_else(|e| panic!("{e}"));
        let found = second.set.iter().find(|p| *p.id == *pid).unwrap_or_else(|| panic!("the child {pid}"));
        assert_eq!((&*found.name, found.ppid.to_string()), ("sleep", me.clone()));
        assert!(second.set.len() < first.set.len(), "only what changed is sent again");

        child.kill().unwrap_or_else(|e| panic!("{e}"));
        child.wait().unwrap_or_else(|e| panic!("{e}"));
        let third = scanner.scan().unwrap_or_else(|e| panic!("{e}"));
        assert!(third.unset.iter().any(|id| *id.id == *pid), "the child is gone");
    }
}
