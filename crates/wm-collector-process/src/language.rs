//! Detects the language a process runs from its executable's name, and, for Go, from the
//! executable's ELF sections.
//!
//! The rules follow the Datadog Agent's language detection (see `docs/wire/process-facts.md`): an
//! interpreter or runtime is known by the name of the program its command line starts
//! (`java`, `python3.12`, `node`, `ruby`, `dotnet`), else by its command name; a Go program by
//! the `.go.buildinfo` section the Go linker writes into every binary (even a stripped one); a
//! .NET program by the runtime library in its memory map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use wm_core::Language;

/// Returns the language a program named `name` runs, from its name alone, by the Datadog
/// Agent's rules: the exact names `python`, `py`, `java`, `node`, `npm`, `dotnet`, `ruby` and
/// `rubyw`; any name that starts with `python`; any that starts with `java` except `javac`; and
/// `ruby` followed by a version (`ruby3.1`). Upstream has no PHP rule; ours takes `php`, `php`
/// followed by a version, `php-fpm…` and `php-cgi…`.
pub fn from_name(name: &str) -> Option<Language> {
    match name {
        "py" | "python" => Some(Language::Python),
        "java" => Some(Language::Java),
        "node" | "npm" => Some(Language::Node),
        "dotnet" => Some(Language::Dotnet),
        "ruby" | "rubyw" => Some(Language::Ruby),
        _ if name.starts_with("python") => Some(Language::Python),
        _ if name.starts_with("java") && name != "javac" => Some(Language::Java),
        _ if ruby_version(name) => Some(Language::Ruby),
        _ if versioned(name, "php") || name.starts_with("php-fpm") || name.starts_with("php-cgi") => {
            Some(Language::Php)
        }
        _ => None,
    }
}

/// Tells whether `name` is `ruby<digits>.<digits>`.
fn ruby_version(name: &str) -> bool {
    name.strip_prefix("ruby").and_then(|v| v.split_once('.')).is_some_and(|(major, minor)| {
        [major, minor].iter().all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Tells whether `name` is `base` followed by nothing or by a version made of digits and dots
/// (`php`, `php8`, `php8.2`).
fn versioned(name: &str, base: &str) -> bool {
    name.strip_prefix(base).is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
}

/// Returns the program name the Datadog Agent matches from a command line's first word: its
/// base name without quotes around it, without one character that is not a letter or digit at
/// each end (`-bash` is `bash`, `(sd-pam)` is `sd-pam`), in lower case.
fn program_name(argv0: &str) -> String {
    let word = argv0.trim_matches('"');
    let base = word.rsplit('/').next().unwrap_or(word);
    let base = base.strip_prefix(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(base);
    let base = base.strip_suffix(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(base);
    base.to_ascii_lowercase()
}

/// The ELF section the Go linker writes its build information into.
const GO_BUILDINFO: &[u8] = b".go.buildinfo";

/// The most section headers read from one file; more is not an executable we can trust.
const MAX_SECTIONS: u64 = 4096;

/// The most bytes of section names read from one file.
const MAX_NAMES: u64 = 1 << 20;

/// Tells whether the ELF file at `path` has a `.go.buildinfo` section: a Go program.
///
/// Reads the ELF header, the section headers and the section names only (a few kilobytes for a
/// usual binary, at most about 1.3 MiB), never the program's code. Gives `false` for a file that
/// cannot be read or is not a 64-bit little-endian ELF file.
pub fn is_go_binary(path: &Path) -> bool {
    go_sections(path).unwrap_or(false)
}

fn go_sections(path: &Path) -> std::io::Result<bool> {
    let mut file = File::open(path)?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header)?;
    // ELFCLASS64 (2) and little-endian (1): what every amd64 and arm64 Linux binary is.
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return Ok(false);
    }
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let shoff = u64::from_le_bytes(header[0x28..0x30].try_into().unwrap_or_default());
    let shentsize = u64::from(u16_at(0x3a));
    let shnum = u64::from(u16_at(0x3c));
    let shstrndx = u64::from(u16_at(0x3e));
    // A 64-bit section header is 64 bytes; any other size is not a file we read.
    if shentsize != 64 || shnum == 0 || shnum > MAX_SECTIONS || shstrndx >= shnum {
        return Ok(false);
    }
    let mut table = vec![0u8; (shentsize * shnum) as usize];
    file.seek(SeekFrom::Start(shoff))?;
    file.read_exact(&mut table)?;
    let section = |i: u64| &table[(i * shentsize) as usize..((i + 1) * shentsize) as usize];
    let u64_in = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let names = section(shstrndx);
    let (names_offset, names_size) = (u64_in(names, 0x18), u64_in(names, 0x20).min(MAX_NAMES));
    let mut strings = vec![0u8; names_size as usize];
    file.seek(SeekFrom::Start(names_offset))?;
    file.read_exact(&mut strings)?;
    Ok((0..shnum).any(|i| {
        let at = u32::from_le_bytes(section(i)[..4].try_into().unwrap_or_default()) as usize;
        strings.get(at..).is_some_and(|rest| rest.starts_with(GO_BUILDINFO) && rest.get(GO_BUILDINFO.len()) == Some(&0))
    }))
}

/// The most bytes of `/proc/<pid>/maps` read to look for the .NET runtime.
const MAX_MAPS: u64 = 4 << 20;

/// Tells whether the process whose memory map is the file `maps` has loaded the .NET runtime
/// (`System.Runtime.dll`), as the Datadog Agent's .NET detector decides. A self-contained
/// single-file .NET program does not show it and is missed, upstream too.
pub fn loads_dotnet(maps: &Path) -> bool {
    use std::io::BufRead;
    let Ok(file) = File::open(maps) else { return false };
    std::io::BufReader::new(file.take(MAX_MAPS))
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with("/System.Runtime.dll"))
}

/// Returns the language of a process from its command name `comm` and command line `argv`, by
/// the Datadog Agent's rules, in order:
/// 1. JRuby: a command name `java` with an argument `org.jruby.Main` is Ruby;
/// 2. the name of the command line's first word ([`from_name`]), then the command name.
///
/// When these find nothing, [`from_binary`] may.
pub fn from_command(comm: &str, argv: &[String]) -> Option<Language> {
    if comm == "java" && argv.iter().skip(1).any(|a| a.trim() == "org.jruby.Main") {
        return Some(Language::Ruby);
    }
    // A command line of one word with spaces in it is a process that rewrote its own (nginx,
    // postgres): its program is the part before the first space.
    let argv0 = match argv {
        [only] => only.split(' ').next().unwrap_or(only),
        [first, ..] => first,
        [] => "",
    };
    from_name(&program_name(argv0)).or_else(|| from_name(comm))
}

/// Returns the language of a process from its executable file `exe_file` (`/proc/<pid>/exe`)
/// and its memory map `maps` (`/proc/<pid>/maps`), as upstream's privileged detectors decide:
/// Go when the executable has a `.go.buildinfo` section, .NET when the map shows
/// `System.Runtime.dll`. Only a privileged agent can read these files of other users'
/// processes; a file it cannot read counts as "no".
pub fn from_binary(exe_file: &Path, maps: &Path) -> Option<Language> {
    if is_go_binary(exe_file) {
        Some(Language::Go)
    } else if loads_dotnet(maps) {
        Some(Language::Dotnet)
    } else {
        None
    }
}

/// Returns the language of a process: [`from_command`], else [`from_binary`].
pub fn detect(comm: &str, argv: &[String], exe_file: &Path, maps: &Path) -> Option<Language> {
    from_command(comm, argv).or_else(|| from_binary(exe_file, maps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_are_known_by_name_as_upstream_decides() {
        let cases = [
            ("java", Some(Language::Java)),
            ("javaw", Some(Language::Java)),
            ("javac", None),
            ("py", Some(Language::Python)),
            ("python", Some(Language::Python)),
            ("python3", Some(Language::Python)),
            ("python3.11", Some(Language::Python)),
            ("node", Some(Language::Node)),
            ("npm", Some(Language::Node)),
            ("nodejs", None),
            ("ruby", Some(Language::Ruby)),
            ("rubyw", Some(Language::Ruby)),
            ("ruby3.1", Some(Language::Ruby)),
            ("ruby3", None),
            ("rails", None),
            ("dotnet", Some(Language::Dotnet)),
            ("php", Some(Language::Php)),
            ("php8.2", Some(Language::Php)),
            ("php-fpm8.2", Some(Language::Php)),
            ("php-cgi", Some(Language::Php)),
            ("phpunit", None),
            ("bash", None),
            ("", None),
        ];
        for (name, language) in cases {
            assert_eq!(from_name(name), language, "{name:?}");
        }
    }

    #[test]
    fn the_program_name_is_trimmed_as_upstream_does() {
        for (argv0, name) in [
            ("/usr/bin/python3.11", "python3.11"),
            ("\"/opt/java/bin/java\"", "java"),
            ("-bash", "bash"),
            ("(sd-pam)", "sd-pam"),
            ("/usr/local/bin/Node", "node"),
            ("", ""),
        ] {
            assert_eq!(program_name(argv0), name, "{argv0:?}");
        }
    }

    #[test]
    fn jruby_the_command_line_and_comm_decide_in_that_order() {
        let none = Path::new("/nonexistent");
        let argv = |words: &[&str]| words.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let jruby = argv(&["/usr/bin/java", "-cp", "x.jar", "org.jruby.Main", "app.rb"]);
        assert_eq!(detect("java", &jruby, none, none), Some(Language::Ruby));
        assert_eq!(detect("gunicorn", &argv(&["/usr/bin/python3", "app.py"]), none, none), Some(Language::Python));
        // Rewritten command line: one word with spaces.
        assert_eq!(detect("x", &argv(&["node server.js --port 80"]), none, none), Some(Language::Node));
        // Nothing in the command line: the command name.
        assert_eq!(detect("ruby", &argv(&["puma 6.0 (tcp://0.0.0.0:3000)"]), none, none), Some(Language::Ruby));
        assert_eq!(detect("sleep", &argv(&["sleep", "30"]), none, none), None);
    }

    #[test]
    fn dotnet_is_known_by_its_runtime_in_the_memory_map() {
        let dir = std::env::temp_dir().join(format!("wm-maps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let maps = dir.join("maps");
        let line = "7f00-7f01 r--p 00000000 08:01 123 /usr/share/dotnet/shared/Microsoft.NETCore.App/8.0.0/System.Runtime.dll\n";
        std::fs::write(&maps, format!("55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/app\n{line}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(loads_dotnet(&maps));
        assert_eq!(
            detect("app", &["/usr/bin/app".to_owned()], Path::new("/nonexistent"), &maps),
            Some(Language::Dotnet)
        );
        std::fs::write(&maps, "55d0-55d1 r-xp 00000000 08:01 1 /usr/bin/app\n").unwrap_or_else(|e| panic!("{e}"));
        assert!(!loads_dotnet(&maps));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_go_binary_is_known_by_its_buildinfo_section_and_others_are_not() {
        // Go is on this machine to build the test cluster; its own binary is a Go program.
        let go = ["/usr/local/go/bin/go", "/usr/lib/go/bin/go"].into_iter().map(Path::new).find(|p| p.exists());
        if let Some(go) = go {
            assert!(is_go_binary(go), "{}", go.display());
        }
        // /bin/sh is C, and this file is not ELF at all.
        assert!(!is_go_binary(Path::new("/bin/sh")));
        assert!(!is_go_binary(Path::new(file!())));
        assert!(!is_go_binary(Path::new("/nonexistent")));
    }

    #[test]
    fn a_truncated_or_lying_elf_header_gives_false() {
        let dir = std::env::temp_dir().join(format!("wm-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut header = vec![0u8; 64];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        // A section table far past the end of the file, and absurd counts.
        header[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        header[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        header[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        header[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, bytes) in [("lying", header.clone()), ("short", header[..20].to_vec())] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            assert!(!is_go_binary(&path), "{name}");
        }
        header[0x3c..0x3e].copy_from_slice(&u16::MAX.to_le_bytes());
        let path = dir.join("many");
        std::fs::write(&path, &header).unwrap_or_else(|e| panic!("{e}"));
        assert!(!is_go_binary(&path));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
