//! Hides secrets in command lines, as the Datadog Agent's process scrubber does.
//!
//! A command line often carries a password or a token (`mysql --password=hunter2`, `app
//! -api_key abc`). Before a command line is stored, the value after each *sensitive word* is
//! replaced with `********`. A word matches an argument's key, the part before `=` or `:` (or the
//! whole argument, whose value is then the next argument), after one or two leading dashes and
//! ignoring case. Words may hold `*`, which matches any run of characters. The program (the first
//! argument) is never scrubbed.

/// The words the Datadog Agent scrubs by default, on Linux.
pub const DEFAULT_SENSITIVE_WORDS: &[&str] = &[
    "*password*",
    "*passwd*",
    "*mysql_pwd*",
    "*access_token*",
    "*auth_token*",
    "*api_key*",
    "*apikey*",
    "*secret*",
    "*credentials*",
    "stripetoken",
];

/// What a scrubbed value is replaced with.
pub const REDACTED: &str = "********";

/// The most arguments kept of one command line, and the most bytes of one argument: a command
/// line is up to 2 MiB on Linux, which the store should not hold for every process.
const MAX_ARGS: usize = 64;
const MAX_ARG_BYTES: usize = 1024;

/// Scrubs command lines with a fixed list of sensitive words.
#[derive(Clone, Debug)]
pub struct Scrubber {
    /// The words, in lower case.
    words: Vec<String>,
    /// Whether to scrub at all (`process_config.scrub_args`).
    scrub: bool,
    /// Whether to keep only the program (`process_config.strip_proc_arguments`).
    strip: bool,
}

impl Scrubber {
    /// Creates a scrubber of the default words plus `custom` ones.
    ///
    /// With `scrub` false nothing is hidden; with `strip` true only the program is kept, whatever
    /// `scrub` says (as upstream).
    pub fn new(custom: &[String], scrub: bool, strip: bool) -> Self {
        let words = DEFAULT_SENSITIVE_WORDS
            .iter()
            .map(|w| (*w).to_owned())
            .chain(custom.iter().map(|w| w.trim().to_ascii_lowercase()))
            .filter(|w| !w.is_empty() && w.chars().any(|c| c != '*'))
            .collect();
        Self { words, scrub, strip }
    }

    /// Tells whether `key` (an argument's name, without dashes) is a sensitive word.
    fn is_sensitive(&self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        self.words.iter().any(|w| glob(w, &key))
    }

    /// Returns `argv` with every sensitive value replaced with [`REDACTED`], cut to 64
    /// arguments of at most 1 KiB each.
    pub fn scrub(&self, mut argv: Vec<String>) -> Vec<String> {
        argv.truncate(if self.strip { 1 } else { MAX_ARGS });
        for arg in &mut argv {
            if arg.len() > MAX_ARG_BYTES {
                let mut end = MAX_ARG_BYTES;
                while !arg.is_char_boundary(end) {
                    end -= 1;
                }
                arg.truncate(end);
            }
        }
        if !self.scrub || self.strip {
            return argv;
        }
        let mut redact_next = false;
        for arg in argv.iter_mut().skip(1) {
            if redact_next {
                *arg = REDACTED.to_owned();
                redact_next = false;
                continue;
            }
            let bare = arg.trim_start_matches('-');
            let dashes = arg.len() - bare.len();
            if dashes > 2 {
                continue;
            }
            match bare.find(['=', ':']) {
                Some(at) if self.is_sensitive(&bare[..at]) => {
                    let keep = dashes + at + 1;
                    arg.truncate(keep);
                    arg.push_str(REDACTED);
                }
                Some(_) => {}
                None => redact_next = self.is_sensitive(bare),
            }
        }
        argv
    }
}

/// Tells whether `text` matches `pattern`, in which `*` stands for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn values_of_sensitive_keys_are_hidden_in_every_form() {
        let scrubber = Scrubber::new(&[], true, false);
        let cases = [
            (vec!["mysql", "--password=hunter2", "-u", "root"], vec!["mysql", "--password=********", "-u", "root"]),
            (vec!["app", "-api_key", "abc", "--port", "80"], vec!["app", "-api_key", "********", "--port", "80"]),
            (vec!["app", "db_password:xyz"], vec!["app", "db_password:********"]),
            (vec!["app", "--MYSQL_PWD=x"], vec!["app", "--MYSQL_PWD=********"]),
            (vec!["app", "--client-secret-file", "/etc/s"], vec!["app", "--client-secret-file", "********"]),
            (vec!["app", "stripetoken", "tok"], vec!["app", "stripetoken", "********"]),
            (vec!["app", "---password=x"], vec!["app", "---password=x"]),
            (vec!["password-manager", "--port=1"], vec!["password-manager", "--port=1"]),
            (vec!["app", "--user=bob"], vec!["app", "--user=bob"]),
        ];
        for (given, expected) in cases {
            assert_eq!(scrubber.scrub(argv(&given)), argv(&expected), "{given:?}");
        }
    }

    #[test]
    fn custom_words_add_to_the_defaults_and_the_switches_work() {
        let scrubber = Scrubber::new(&["Licence*".to_owned(), "***".to_owned()], true, false);
        assert_eq!(
            scrubber.scrub(argv(&["a", "--licence_key=1", "--password=2"])),
            argv(&["a", "--licence_key=********", "--password=********"])
        );
        let off = Scrubber::new(&[], false, false);
        assert_eq!(off.scrub(argv(&["a", "--password=2"])), argv(&["a", "--password=2"]));
        let strip = Scrubber::new(&[], false, true);
        assert_eq!(strip.scrub(argv(&["a", "--password=2"])), argv(&["a"]));
    }

    #[test]
    fn long_command_lines_are_cut() {
        let scrubber = Scrubber::new(&[], true, false);
        let many: Vec<String> = (0..1000).map(|i| format!("arg{i}")).collect();
        assert_eq!(scrubber.scrub(many).len(), MAX_ARGS);
        let long = vec!["a".to_owned(), "é".repeat(2000)];
        let cut = scrubber.scrub(long);
        assert!(cut[1].len() <= MAX_ARG_BYTES && cut[1].chars().all(|c| c == 'é'));
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob("*password*", "db_password_file"));
        assert!(glob("*password*", "password"));
        assert!(!glob("*password*", "passw"));
        assert!(glob("stripetoken", "stripetoken"));
        assert!(!glob("stripetoken", "stripetokens"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(!glob("ab*ba", "aba"));
    }
}
