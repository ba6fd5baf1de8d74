//! Resource limits of a step's process: `ulimit`s set with `setrlimit(2)` in the child before
//! it drops privileges, and the size of its `/dev/shm` (Docker's `--ulimit` and `--shm-size`).

use std::fmt;
use std::str::FromStr;

use crate::SandboxError;

/// Docker's `--ulimit` names and the `RLIMIT_*` resource each sets.
#[allow(clippy::unnecessary_cast)] // u32 on glibc, c_int on musl
const RESOURCES: [(&str, u32); 15] = [
    ("core", libc::RLIMIT_CORE as u32),
    ("cpu", libc::RLIMIT_CPU as u32),
    ("data", libc::RLIMIT_DATA as u32),
    ("fsize", libc::RLIMIT_FSIZE as u32),
    ("locks", libc::RLIMIT_LOCKS as u32),
    ("memlock", libc::RLIMIT_MEMLOCK as u32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as u32),
    ("nice", libc::RLIMIT_NICE as u32),
    ("nofile", libc::RLIMIT_NOFILE as u32),
    ("nproc", libc::RLIMIT_NPROC as u32),
    ("rss", libc::RLIMIT_RSS as u32),
    ("rtprio", libc::RLIMIT_RTPRIO as u32),
    ("rttime", libc::RLIMIT_RTTIME as u32),
    ("sigpending", libc::RLIMIT_SIGPENDING as u32),
    ("stack", libc::RLIMIT_STACK as u32),
];

/// One resource limit, `TYPE=SOFT[:HARD]` as `docker build --ulimit` takes it: TYPE one of
/// Docker's names (`nofile`, `nproc`, `core`, ...), `-1` meaning unlimited, HARD the soft
/// limit when omitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    name: &'static str,
    resource: u32,
    soft: u64,
    hard: u64,
}

impl Ulimit {
    /// Docker's name of the resource (`nofile`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The `RLIMIT_*` number.
    pub fn resource(&self) -> u32 {
        self.resource
    }

    /// The soft limit (`u64::MAX`: unlimited).
    pub fn soft(&self) -> u64 {
        self.soft
    }

    /// The hard limit (`u64::MAX`: unlimited).
    pub fn hard(&self) -> u64 {
        self.hard
    }
}

impl FromStr for Ulimit {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Ulimit, SandboxError> {
        let bad = |reason: &'static str| SandboxError::BadUlimit { value: s.to_string(), reason };
        let (name, limits) = s.split_once('=').ok_or_else(|| bad("expected TYPE=SOFT[:HARD]"))?;
        let &(name, resource) = RESOURCES
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| bad("unknown type (core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack)"))?;
        let value = |v: &str| match v {
            "-1" => Ok(u64::MAX),
            v => v.parse::<u64>().map_err(|_| bad("a limit is a number or -1")),
        };
        let (soft, hard) = match limits.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => (value(limits)?, value(limits)?),
        };
        if soft > hard {
            return Err(bad("the soft limit is above the hard limit"));
        }
        Ok(Ulimit { name, resource, soft, hard })
    }
}

impl fmt::Display for Ulimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |n: u64| if n == u64::MAX { "-1".to_string() } else { n.to_string() };
        write!(f, "{}={}:{}", self.name, v(self.soft), v(self.hard))
    }
}

/// A byte size as Docker's `--shm-size` takes it (`RAMInBytes`): a number with an optional
/// binary unit `b`, `k`, `m`, `g`, `t` or `p` (case-insensitive, an optional trailing `b`:
/// `64m`, `1GB`, `4096`).
pub fn parse_size(s: &str) -> Result<u64, SandboxError> {
    let bad = || SandboxError::BadSize { value: s.to_string() };
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim();
    let unit = unit.strip_suffix('b').filter(|u| !u.is_empty()).unwrap_or(unit);
    let scale: u64 = match unit {
        "" | "b" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return Err(bad()),
    };
    let bytes = number * scale as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_parse_as_docker_takes_them() {
        let u: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!((u.name(), u.soft(), u.hard()), ("nofile", 1024, 2048));
        assert_eq!(u64::from(u.resource()), libc::RLIMIT_NOFILE as u64);
        let u: Ulimit = "nproc=512".parse().unwrap();
        assert_eq!((u.soft(), u.hard()), (512, 512));
        let u: Ulimit = "core=-1".parse().unwrap();
        assert_eq!((u.soft(), u.hard()), (u64::MAX, u64::MAX));
        assert_eq!(u.to_string(), "core=-1:-1");
        for bad in ["nofile", "files=1", "nofile=x", "nofile=10:5", "nofile=1:"] {
            assert!(bad.parse::<Ulimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_as_docker_ram_in_bytes() {
        assert_eq!(parse_size("64m").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        for bad in ["", "m", "12x", "-1", "0"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
