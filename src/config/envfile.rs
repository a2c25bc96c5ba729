//! A systemd `EnvironmentFile=` (e.g. `/etc/mor-gateway/secrets.env`) read
//! as the service would see it, so that `check --env-file` needs no secret
//! in the shell's environment. The syntax is systemd's: `NAME=VALUE` lines,
//! `#` and `;` comment lines, values optionally in single quotes (literal)
//! or double quotes (`\"`, `\\`, `` \` ``, `\$` escaped), a backslash at the
//! end of a line continuing it. Errors name the line, never its value.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use crate::config::Env;

/// Why an environment file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A line systemd would not accept either.
    #[error("{path}, line {line}: {problem}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the value).
        problem: &'static str,
    },
}

/// The variables of one environment file; names it does not set come from
/// the process environment (as a drop-in's `Environment=` would give them).
#[derive(Clone, Default)]
pub struct EnvFile {
    vars: HashMap<String, OsString>,
}

impl std::fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.vars.keys().collect();
        names.sort();
        write!(f, "EnvFile({names:?}, values redacted)")
    }
}

impl EnvFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<EnvFile, EnvFileError> {
        let bytes = std::fs::read(path).map_err(|source| EnvFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&bytes).map_err(|(line, problem)| EnvFileError::Syntax {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// The names the file sets, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        n.sort_unstable();
        n
    }
}

impl Env for EnvFile {
    fn var(&self, name: &str) -> Option<OsString> {
        self.vars
            .get(name)
            .cloned()
            .or_else(|| std::env::var_os(name))
    }
}

fn valid_name(n: &[u8]) -> bool {
    matches!(n.first(), Some(c) if c.is_ascii_alphabetic() || *c == b'_')
        && n.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Parses the file's bytes; an error is (line, problem).
fn parse(text: &[u8]) -> Result<EnvFile, (usize, &'static str)> {
    let mut vars = HashMap::new();
    let mut i = 0;
    let mut line = 1;
    while i < text.len() {
        // Leading blanks, then a comment, an empty line or NAME=.
        while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\r') {
            i += 1;
        }
        if i >= text.len() {
            break;
        }
        if matches!(text[i], b'#' | b';' | b'\n') {
            while i < text.len() && text[i] != b'\n' {
                i += 1;
            }
            i += 1;
            line += 1;
            continue;
        }
        let start_line = line;
        let name_start = i;
        while i < text.len() && !matches!(text[i], b'=' | b'\n') {
            i += 1;
        }
        if i >= text.len() || text[i] != b'=' {
            return Err((start_line, "expected NAME=VALUE"));
        }
        let name = text[name_start..i].trim_ascii();
        if !valid_name(name) {
            return Err((start_line, "not a valid variable name"));
        }
        i += 1;
        let (value, next, lines) = value(&text[i..]).map_err(|p| (start_line, p))?;
        i += next;
        line += lines;
        // Names are ASCII (valid_name).
        let name = String::from_utf8_lossy(name).into_owned();
        vars.insert(name, OsString::from_vec(value));
    }
    Ok(EnvFile { vars })
}

/// One value up to its end of line: (value, bytes consumed including the
/// newline, newlines consumed).
fn value(t: &[u8]) -> Result<(Vec<u8>, usize, usize), &'static str> {
    let mut out = Vec::new();
    let mut i = 0;
    let mut lines = 0;
    // Unquoted leading blanks are not part of the value.
    while i < t.len() && matches!(t[i], b' ' | b'\t') {
        i += 1;
    }
    // Length of `out` that trailing-blank trimming must keep (quoted text).
    let mut keep = 0;
    while i < t.len() {
        match t[i] {
            b'\n' => {
                i += 1;
                lines += 1;
                break;
            }
            b'\'' => {
                i += 1;
                let end = t[i..]
                    .iter()
                    .position(|c| *c == b'\'')
                    .ok_or("a single quote is not closed")?;
                lines += t[i..i + end].iter().filter(|c| **c == b'\n').count();
                out.extend_from_slice(&t[i..i + end]);
                i += end + 1;
                keep = out.len();
            }
            b'"' => {
                i += 1;
                loop {
                    match t.get(i) {
                        None => return Err("a double quote is not closed"),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => match t.get(i + 1) {
                            Some(c @ (b'"' | b'\\' | b'`' | b'$')) => {
                                out.push(*c);
                                i += 2;
                            }
                            Some(b'\n') => {
                                lines += 1;
                                i += 2;
                            }
                            _ => {
                                out.push(b'\\');
                                i += 1;
                            }
                        },
                        Some(c) => {
                            if *c == b'\n' {
                                lines += 1;
                            }
                            out.push(*c);
                            i += 1;
                        }
                    }
                }
                keep = out.len();
            }
            b'\\' => match t.get(i + 1) {
                // A continued line.
                Some(b'\n') => {
                    lines += 1;
                    i += 2;
                }
                Some(c) => {
                    out.push(*c);
                    i += 2;
                    keep = out.len();
                }
                None => i += 1,
            },
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    while out.len() > keep && matches!(out.last(), Some(b' ' | b'\t' | b'\r')) {
        out.pop();
    }
    Ok((out, i, lines))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "a test")]
    use super::*;

    fn vars(t: &str) -> HashMap<String, String> {
        parse(t.as_bytes())
            .unwrap()
            .vars
            .into_iter()
            .map(|(k, v)| (k, v.into_string().unwrap()))
            .collect()
    }

    #[test]
    fn reads_what_systemd_reads() {
        let v = vars(
            "# the API secret\n\
             ; another comment\n\
             \n\
             MOR_API_SECRET=abc def  \n\
             \tQ1 = 'a \"b\" #c '\n\
             Q2=\"x \\\"y\\\" \\\\ \\$z \\n\"\n\
             EMPTY=\n\
             CONT=one\\\n\
             two\n\
             ESC=a\\ b\n\
             LAST=no-newline",
        );
        assert_eq!(v["MOR_API_SECRET"], "abc def");
        assert_eq!(v["Q1"], "a \"b\" #c ");
        assert_eq!(v["Q2"], "x \"y\" \\ $z \\n");
        assert_eq!(v["EMPTY"], "");
        assert_eq!(v["CONT"], "onetwo");
        assert_eq!(v["ESC"], "a b");
        assert_eq!(v["LAST"], "no-newline");
        assert_eq!(v.len(), 7);
    }

    #[test]
    fn a_later_line_wins_and_crlf_is_tolerated() {
        let v = vars("K=1\r\nK=2\r\n");
        assert_eq!(v["K"], "2");
    }

    #[test]
    fn errors_name_the_line_never_the_value() {
        for (text, line, problem) in [
            ("A=1\nsecret-without-equals\n", 2, "expected NAME=VALUE"),
            ("A=1\n\n1BAD=x\n", 3, "not a valid variable name"),
            ("A='open\n", 1, "a single quote is not closed"),
            ("# c\nA=\"open\n", 2, "a double quote is not closed"),
            ("export A=1\n", 1, "not a valid variable name"),
        ] {
            let Err((l, p)) = parse(text.as_bytes()) else {
                panic!("accepted {text:?}");
            };
            assert_eq!((l, p), (line, problem), "{text:?}");
        }
        let e = EnvFileError::Syntax {
            path: "/etc/x.env".into(),
            line: 2,
            problem: "expected NAME=VALUE",
        };
        assert_eq!(e.to_string(), "/etc/x.env, line 2: expected NAME=VALUE");
    }

    #[test]
    fn line_numbers_count_continued_and_quoted_lines() {
        let Err((l, _)) = parse(b"A=\"x\ny\"\nB=a\\\nb\nbroken\n") else {
            panic!("accepted");
        };
        assert_eq!(l, 5);
    }

    #[test]
    fn the_file_wins_over_the_process_and_debug_shows_no_value() {
        let f = parse(b"PATH=from-file\nMORGW_ENVFILE_ONLY=s3cr3t\n").unwrap();
        assert_eq!(f.var("PATH").unwrap(), "from-file");
        assert_eq!(f.var("MORGW_ENVFILE_ONLY").unwrap(), "s3cr3t");
        assert!(f.var("HOME").is_some() || std::env::var_os("HOME").is_none());
        assert_eq!(f.names(), ["MORGW_ENVFILE_ONLY", "PATH"]);
        assert!(!format!("{f:?}").contains("s3cr3t"));
    }
}
