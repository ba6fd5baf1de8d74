//! `COPY --chmod` and `ADD --chmod` modes: octal, or chmod(1)'s symbolic changes.
//!
//! An octal mode (`0755`, `644`, `4755`) is absolute: every copied entry gets exactly those
//! twelve bits. A symbolic mode (`+x`, `u=rwX,go=rX`, `g=u`, `a-w`) is a list of changes
//! applied to each copied entry's own mode, so its result depends on the entry: `X` adds (or
//! removes) execute permission only for a directory or for a file that already has an execute
//! bit, which is what makes `u=rwX,go=rX` give directories 0755 and plain files 0644 in one
//! step. A [`Chmod`] is parsed once, when the recipe is ([`crate::instruction`]); the builder
//! only calls [`Chmod::apply`] per entry.
//!
//! The rules are BuildKit's (Dockerfile syntax 1.14): a value starting with a digit must be an
//! octal number no greater than `07777`; anything else is a symbolic mode as BSD's `setmode(3)`
//! reads it with a umask of 0 (BuildKit hands it to fsutil's port of that function):
//! comma-separated clauses `[ugoa]*` followed by one or more actions, each an operator `+`,
//! `-` or `=` and either permission letters from `rwxXst` or one class letter `u`, `g` or `o`
//! to copy that class's bits (`g=u`, `o-g`). No `who` means all classes; `a` and no `who`
//! leave the sticky bit alone unless `t` is given; `s` and `t` mean nothing for `o` alone. As
//! Linux chmod and POSIX.1-2024 do, and as BuildKit does since it took symbolic modes out of
//! labs, `X` works with every operator, not only `+` as historical BSD had it; its condition
//! looks at the entry's mode before any change (BSD's reading), so `a-x,a+X` keeps a file
//! executable that was.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

use crate::error::ParseErrorKind;

const SETUID: u32 = 0o4000;
const SETGID: u32 = 0o2000;
const STICKY: u32 = 0o1000;
const USER: u32 = 0o700;
const GROUP: u32 = 0o070;
const OTHER: u32 = 0o007;
/// What `a` (and an empty `who`) covers: everything but the sticky bit.
const STANDARD: u32 = SETUID | SETGID | USER | GROUP | OTHER;
const READ: u32 = 0o444;
const WRITE: u32 = 0o222;
const EXEC: u32 = 0o111;
/// The twelve bits a mode change can touch.
const ALL_BITS: u32 = 0o7777;

/// A `--chmod` value, parsed: octal or symbolic. [`FromStr`] is the only way to make one;
/// [`fmt::Display`] and serde give back the text as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chmod {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Octal(u32),
    Symbolic(Vec<Change>),
}

/// A permission class whose bits `g=u`-style actions copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    User,
    Group,
    Other,
}

impl Class {
    fn shift(self) -> u32 {
        match self {
            Class::User => 6,
            Class::Group => 3,
            Class::Other => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Assign,
}

/// One step of a symbolic mode, applied in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Clears these bits.
    Clear(u32),
    /// Sets these bits.
    Set(u32),
    /// `X` with `+` or `=`: sets these bits for a directory or an entry whose original mode
    /// has an execute bit.
    SetIfExecutable(u32),
    /// `X` with `-`: clears them under the same condition.
    ClearIfExecutable(u32),
    /// Copies the `rwx` triple of `from` into each class of `to` (`g=u`, `o+g`, `u-o`).
    Copy { from: Class, to: Vec<Class>, op: Op },
}

impl Chmod {
    /// The mode `--chmod` gives an entry whose mode is now `mode` (its permission bits are
    /// used; file-type bits are ignored) and which is a directory or not. Only the low twelve
    /// bits are returned.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let original = mode & ALL_BITS;
        let changes = match &self.kind {
            Kind::Octal(m) => return *m,
            Kind::Symbolic(changes) => changes,
        };
        let executable = is_dir || original & EXEC != 0;
        let mut m = original;
        for change in changes {
            match change {
                Change::Clear(bits) => m &= !bits,
                Change::Set(bits) => m |= bits,
                Change::SetIfExecutable(bits) if executable => m |= bits,
                Change::ClearIfExecutable(bits) if executable => m &= !bits,
                Change::SetIfExecutable(_) | Change::ClearIfExecutable(_) => {}
                Change::Copy { from, to, op } => {
                    let value = (m >> from.shift()) & 0o7;
                    for class in to {
                        let shift = class.shift();
                        match op {
                            Op::Add => m |= value << shift,
                            Op::Remove => m &= !(value << shift),
                            Op::Assign => m = (m & !(0o7 << shift)) | (value << shift),
                        }
                    }
                }
            }
        }
        m
    }

    /// The octal mode, when the value is one (`None` for a symbolic mode).
    pub fn octal(&self) -> Option<u32> {
        match self.kind {
            Kind::Octal(m) => Some(m),
            Kind::Symbolic(_) => None,
        }
    }

    /// The value as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Chmod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Chmod {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl FromStr for Chmod {
    type Err = ParseErrorKind;

    /// Parses an octal (`0755`) or symbolic (`u=rwX,go=rX`) mode; the error is
    /// [`ParseErrorKind::InvalidChmod`].
    fn from_str(text: &str) -> Result<Chmod, ParseErrorKind> {
        let invalid = |reason: &str| ParseErrorKind::InvalidChmod {
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let kind = if text.starts_with(|c: char| c.is_ascii_digit()) {
            let mode = u32::from_str_radix(text, 8)
                .ok()
                .filter(|m| *m <= ALL_BITS)
                .ok_or_else(|| invalid("an octal mode must be an octal number from 0 to 07777"))?;
            Kind::Octal(mode)
        } else {
            Kind::Symbolic(parse_symbolic(text).map_err(invalid)?)
        };
        Ok(Chmod { text: text.to_string(), kind })
    }
}

/// The `who` bits an action with `perm` touches (all standard bits when `who` is empty).
fn affected(who: u32, perm: u32) -> u32 {
    if who == 0 {
        perm
    } else {
        who & perm
    }
}

/// The changes of one `op` with permission letters `perm` (BSD `addcmd`).
fn push_action(out: &mut Vec<Change>, op: Op, who: u32, perm: u32) {
    match op {
        Op::Assign => {
            out.push(Change::Clear(if who == 0 { STANDARD } else { who }));
            out.push(Change::Set(affected(who, perm)));
        }
        Op::Add => out.push(Change::Set(affected(who, perm))),
        Op::Remove => out.push(Change::Clear(affected(who, perm))),
    }
}

fn push_x(out: &mut Vec<Change>, op: Op, who: u32) {
    let bits = affected(who, EXEC);
    out.push(match op {
        Op::Add | Op::Assign => Change::SetIfExecutable(bits),
        Op::Remove => Change::ClearIfExecutable(bits),
    });
}

/// The classes a class-copy action writes: those named in `who`, all three when none is.
fn classes(who: u32) -> Vec<Class> {
    if who == 0 {
        return vec![Class::User, Class::Group, Class::Other];
    }
    [(USER, Class::User), (GROUP, Class::Group), (OTHER, Class::Other)]
        .into_iter()
        .filter(|(bits, _)| who & bits != 0)
        .map(|(_, c)| c)
        .collect()
}

const SYNTAX: &str = "expected comma-separated [ugoa]*[+-=][rwxXst]* clauses (or [+-=][ugo] \
                      to copy a class), or an octal mode";

/// Reads a symbolic mode the way BSD `setmode(3)` does (umask 0), into changes.
fn parse_symbolic(text: &str) -> Result<Vec<Change>, &'static str> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    loop {
        // A clause: who letters, then actions.
        let mut who = 0u32;
        loop {
            who |= match b.get(i) {
                None => return Err(SYNTAX),
                Some(b'a') => STANDARD,
                Some(b'u') => SETUID | USER,
                Some(b'g') => SETGID | GROUP,
                Some(b'o') => OTHER,
                Some(_) => break,
            };
            i += 1;
        }
        loop {
            let op = match b.get(i) {
                Some(b'+') => Op::Add,
                Some(b'-') => Op::Remove,
                Some(b'=') => Op::Assign,
                _ => return Err(SYNTAX),
            };
            i += 1;
            who &= !STICKY;
            let (mut perm, mut x, mut assigned) = (0u32, false, false);
            loop {
                match b.get(i) {
                    Some(b'r') => perm |= READ,
                    Some(b'w') => perm |= WRITE,
                    Some(b'x') => perm |= EXEC,
                    Some(b'X') => x = true,
                    // Set-id and sticky mean nothing for "other" alone.
                    Some(b's') if who == 0 || who & !OTHER != 0 => perm |= SETUID | SETGID,
                    Some(b't') if who == 0 || who & !OTHER != 0 => {
                        who |= STICKY;
                        perm |= STICKY;
                    }
                    Some(b's' | b't') => {}
                    Some(&c @ (b'u' | b'g' | b'o')) => {
                        if perm != 0 {
                            push_action(&mut out, op, who, perm);
                            perm = 0;
                        }
                        assigned |= op == Op::Assign;
                        if x {
                            push_x(&mut out, op, who);
                            x = false;
                        }
                        let from = match c {
                            b'u' => Class::User,
                            b'g' => Class::Group,
                            _ => Class::Other,
                        };
                        out.push(Change::Copy { from, to: classes(who), op });
                    }
                    _ => {
                        if perm != 0 || (op == Op::Assign && !assigned) {
                            push_action(&mut out, op, who, perm);
                        }
                        if x {
                            push_x(&mut out, op, who);
                        }
                        break;
                    }
                }
                i += 1;
            }
            match b.get(i) {
                None => return Ok(out),
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(_) => {}
            }
        }
    }
}

/// The `--chmod` of a COPY or ADD as a [`crate::CopySpec`] holds it. A value naming no
/// variable is parsed when the instruction is ([`crate::Instruction::from_node`]); one that
/// does (`--chmod=$MODE`) is parsed by [`crate::Instruction::expand`], so every expanded step
/// holds a [`ChmodFlag::Mode`]. Both serialize as the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChmodFlag {
    /// The parsed mode.
    Mode(Chmod),
    /// The value as written, before its variables are expanded.
    Unexpanded(String),
}

impl ChmodFlag {
    /// The mode, once parsed (always, for an expanded step).
    pub fn mode(&self) -> Option<&Chmod> {
        match self {
            ChmodFlag::Mode(m) => Some(m),
            ChmodFlag::Unexpanded(_) => None,
        }
    }

    /// The text: as written, or after expansion once expanded.
    pub fn as_str(&self) -> &str {
        match self {
            ChmodFlag::Mode(m) => m.as_str(),
            ChmodFlag::Unexpanded(w) => w,
        }
    }
}

impl fmt::Display for ChmodFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ChmodFlag {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(text: &str) -> Chmod {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// `(spec, mode before, is_dir, mode after)`: the first block follows dchapes-mode's own
    /// table (BuildKit's parser), the rest chmod(1)'s documented examples.
    #[test]
    fn symbolic_modes_apply_like_setmode() {
        let cases: &[(&str, u32, bool, u32)] = &[
            ("u+X", 0o000, false, 0o000),
            ("u+X", 0o001, false, 0o101),
            ("u+X", 0o000, true, 0o100),
            ("g+X", 0o100, false, 0o110),
            ("o+X", 0o000, true, 0o001),
            ("+X", 0o010, false, 0o111),
            ("-X", 0o777, false, 0o666),
            ("=rw,+X", 0o666, false, 0o666),
            ("=rw,+X", 0o766, false, 0o777),
            ("u=rwX,go=rX", 0o600, false, 0o644),
            ("u=rwX,go=rX", 0o700, true, 0o755),
            ("u=rwX,go=rX", 0o751, false, 0o755),
            ("u=rwX,go=rX", 0o000, true, 0o755),
            ("+x", 0o644, false, 0o755),
            ("a-w", 0o777, false, 0o555),
            ("go-w", 0o777, true, 0o755),
            ("go=", 0o777, false, 0o700),
            ("g=u", 0o640, false, 0o660),
            ("go=u-w", 0o755, false, 0o755),
            ("u=rwx,go=u-w", 0o000, false, 0o755),
            ("o+g", 0o750, false, 0o755),
            ("u-o", 0o705, false, 0o205),
            ("u+s", 0o755, false, 0o4755),
            ("g+s", 0o755, true, 0o2755),
            ("+s", 0o755, false, 0o6755),
            ("o+s", 0o755, false, 0o755),
            ("+t", 0o777, true, 0o1777),
            ("o+t", 0o777, true, 0o777),
            ("=", 0o1777, true, 0o1000),
            ("a=r", 0o4777, false, 0o444),
            ("u+r-w", 0o200, false, 0o400),
            ("a-x,a+X", 0o755, false, 0o755),
            ("u=X", 0o644, false, 0o044),
            ("+", 0o640, false, 0o640),
        ];
        for &(spec, before, is_dir, after) in cases {
            let got = mode(spec).apply(before, is_dir);
            assert_eq!(got, after, "{spec} on {before:o} (dir {is_dir}): got {got:o}");
        }
    }

    #[test]
    fn octal_modes_replace_every_bit() {
        assert_eq!(mode("0755").apply(0o4600, false), 0o755);
        assert_eq!(mode("644").apply(0o777, true), 0o644);
        assert_eq!(mode("4755").octal(), Some(0o4755));
        assert_eq!(mode("0").apply(0o777, false), 0);
        assert_eq!(mode("u+x").octal(), None);
        // File-type bits of the input are ignored.
        assert_eq!(mode("go-w").apply(0o100_666, false), 0o644);
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "", "64a", "10000", "0o755", "8", "u", "u+rZ", "x", "u+x,", ",u+x", "u!x", "+0755",
            "rwx", "ug",
        ] {
            assert!(
                matches!(bad.parse::<Chmod>(), Err(ParseErrorKind::InvalidChmod { .. })),
                "{bad:?} parsed"
            );
        }
    }

    #[test]
    fn text_round_trips() {
        let m = mode("u=rwX,go=rX");
        assert_eq!(m.to_string(), "u=rwX,go=rX");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"u=rwX,go=rX\"");
        let flag = ChmodFlag::Unexpanded("$MODE".into());
        assert_eq!(serde_json::to_string(&flag).unwrap(), "\"$MODE\"");
        assert_eq!(flag.mode(), None);
    }
}
