//! Running steps of a foreign platform through qemu user-mode emulation.
//!
//! A `RUN` step for another architecture needs nothing from the sandbox itself: the kernel's
//! binfmt_misc sees that an `execve`d ELF file is for, say, aarch64 and starts the registered
//! interpreter (qemu) with it instead. The catch is *where* the interpreter is looked up: by
//! default the kernel opens it by path when the foreign program is executed, that is inside
//! the step's root, so the emulator would have to be copied into the image and would end up
//! in its layers. A handler registered with the `F` ("fix binary") flag has its interpreter
//! opened once, at registration, from the host; it then works in any mount namespace and
//! after `pivot_root`. strata therefore requires `F` and never places an emulator in a
//! rootfs. [`ensure_emulation`] checks, before a foreign step, that an enabled handler
//! matching the platform's ELF header exists and has `F`; as root it mounts binfmt_misc if
//! needed and registers Debian's `qemu-user-static` handler (`/usr/lib/binfmt.d/qemu-*.conf`)
//! with `F` when none matches. Otherwise it says exactly what to install or run.
//!
//! A platform counts as native only when its architecture is the host's (`linux/386` on an
//! amd64 host goes through emulation too: whether the kernel runs 32-bit programs depends on
//! its configuration, which a check here could not vouch for).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use strata_types::Platform;

use crate::SandboxError;

/// How steps of a platform run on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emulation {
    /// The host's own architecture: the kernel runs the step's programs itself.
    Native,
    /// Through a binfmt_misc handler registered with the `F` flag.
    Qemu {
        /// The handler's name (its file in `/proc/sys/fs/binfmt_misc`).
        handler: String,
        /// The interpreter it runs, a host path (opened by the kernel at registration).
        interpreter: PathBuf,
    },
}

/// Where binfmt_misc lives on the host.
const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Where systemd-binfmt (and Debian's packages) keep registration lines, in precedence order.
const CONF_DIRS: [&str; 3] = ["/etc/binfmt.d", "/run/binfmt.d", "/usr/lib/binfmt.d"];

/// Makes sure programs of `platform` can run in a step on this host, registering qemu in
/// binfmt_misc when strata runs as root and a handler is missing.
///
/// Returns [`Emulation::Native`] for the host's architecture. For a foreign one: mounts
/// binfmt_misc on `/proc/sys/fs/binfmt_misc` when it is not mounted (root only), looks for
/// an enabled handler whose magic and mask match an ELF executable of the platform (both
/// `ET_EXEC` and `ET_DYN`), and, when there is none, registers the line of
/// `qemu-<arch>.conf` from `/etc/binfmt.d`, `/run/binfmt.d` or `/usr/lib/binfmt.d` (Debian's
/// `qemu-user-static` ships them) with the `F` flag added. Two builds registering at once
/// is fine: the loser's `EEXIST` is followed by another look.
///
/// # Errors
/// [`SandboxError::UnsupportedPlatform`] for an OS other than linux or an architecture
/// without a known ELF machine; [`SandboxError::NoEmulation`] when no handler matches and
/// none can be registered (not root, no `qemu-user-static`, binfmt_misc disabled);
/// [`SandboxError::EmulationWithoutFixBinary`] when the matching handler lacks `F`;
/// [`SandboxError::DynamicEmulator`] when its interpreter is dynamically linked;
/// [`SandboxError::EmulationSetup`] when mounting, reading or registering fails.
pub fn ensure_emulation(platform: &Platform) -> Result<Emulation, SandboxError> {
    let host = Host {
        binfmt: PathBuf::from(BINFMT_DIR),
        conf_dirs: CONF_DIRS.iter().map(PathBuf::from).collect(),
        root: rustix::process::geteuid().is_root(),
    };
    ensure_in(platform, &Platform::host(), &host, &mut RealBinfmt)
}

/// The host as [`ensure_in`] sees it; tests point it at fake directories.
struct Host {
    binfmt: PathBuf,
    conf_dirs: Vec<PathBuf>,
    root: bool,
}

/// The two side effects: mounting binfmt_misc and writing a registration.
trait BinfmtOps {
    fn mount(&mut self, dir: &Path) -> io::Result<()>;
    fn register(&mut self, register: &Path, line: &str) -> io::Result<()>;
}

struct RealBinfmt;

impl BinfmtOps for RealBinfmt {
    fn mount(&mut self, dir: &Path) -> io::Result<()> {
        rustix::mount::mount(
            "binfmt_misc",
            dir,
            "binfmt_misc",
            rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC,
            None,
        )?;
        Ok(())
    }
    fn register(&mut self, register: &Path, line: &str) -> io::Result<()> {
        // The kernel parses one write(2) as one registration.
        let mut f = fs::OpenOptions::new().write(true).open(register)?;
        let n = f.write(format!("{line}\n").as_bytes())?;
        if n != line.len() + 1 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        Ok(())
    }
}

/// What an ELF executable of an architecture has in its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ElfArch {
    /// qemu's name for it (`qemu-<name>.conf`, `qemu-<name>-static`).
    qemu: &'static str,
    /// `EI_CLASS`: 1 = 32-bit, 2 = 64-bit.
    class: u8,
    /// `EI_DATA`: 1 = little endian, 2 = big endian.
    data: u8,
    /// `e_machine`.
    machine: u16,
}

/// The OCI architectures strata can emulate.
const ARCHES: [(&str, ElfArch); 8] = [
    ("amd64", ElfArch { qemu: "x86_64", class: 2, data: 1, machine: 62 }),
    ("386", ElfArch { qemu: "i386", class: 1, data: 1, machine: 3 }),
    ("arm64", ElfArch { qemu: "aarch64", class: 2, data: 1, machine: 183 }),
    ("arm", ElfArch { qemu: "arm", class: 1, data: 1, machine: 40 }),
    ("ppc64le", ElfArch { qemu: "ppc64le", class: 2, data: 1, machine: 21 }),
    ("s390x", ElfArch { qemu: "s390x", class: 2, data: 2, machine: 22 }),
    ("riscv64", ElfArch { qemu: "riscv64", class: 2, data: 1, machine: 243 }),
    ("mips64le", ElfArch { qemu: "mips64el", class: 2, data: 1, machine: 8 }),
];

impl ElfArch {
    fn of(architecture: &str) -> Option<ElfArch> {
        ARCHES.iter().find(|(a, _)| *a == architecture).map(|(_, e)| *e)
    }

    /// The first 64 bytes of an ELF file of this architecture and type
    /// (2 = `ET_EXEC`, 3 = `ET_DYN`), the rest zero.
    fn header(&self, e_type: u16) -> [u8; 64] {
        let mut h = [0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = self.class;
        h[5] = self.data;
        h[6] = 1; // EI_VERSION
        let (t, m) = if self.data == 2 {
            (e_type.to_be_bytes(), self.machine.to_be_bytes())
        } else {
            (e_type.to_le_bytes(), self.machine.to_le_bytes())
        };
        h[16..18].copy_from_slice(&t);
        h[18..20].copy_from_slice(&m);
        h
    }
}

/// One file of `/proc/sys/fs/binfmt_misc` other than `register` and `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BinfmtEntry {
    name: String,
    enabled: bool,
    interpreter: PathBuf,
    flags: String,
    offset: usize,
    /// `None` for an extension-matching entry.
    magic: Option<Vec<u8>>,
    /// `None`: every bit counts.
    mask: Option<Vec<u8>>,
}

impl BinfmtEntry {
    /// Parses the kernel's text (`enabled`, `interpreter X`, `flags: F`, `offset N`,
    /// `magic HEX`, `mask HEX`); `None` when it is not an entry.
    fn parse(name: &str, text: &str) -> Option<BinfmtEntry> {
        let mut lines = text.lines();
        let enabled = match lines.next()? {
            "enabled" => true,
            "disabled" => false,
            _ => return None,
        };
        let mut entry = BinfmtEntry {
            name: name.to_string(),
            enabled,
            interpreter: PathBuf::new(),
            flags: String::new(),
            offset: 0,
            magic: None,
            mask: None,
        };
        for line in lines {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "interpreter" => entry.interpreter = PathBuf::from(value),
                "flags:" => entry.flags = value.trim().to_string(),
                "offset" => entry.offset = value.parse().ok()?,
                "magic" => entry.magic = Some(parse_hex(value)?),
                "mask" => entry.mask = Some(parse_hex(value)?),
                _ => {}
            }
        }
        Some(entry)
    }

    /// Whether the kernel would hand a file starting with `header` to this entry.
    fn matches(&self, header: &[u8]) -> bool {
        let Some(magic) = &self.magic else { return false };
        let Some(window) = header.get(self.offset..self.offset + magic.len()) else {
            return false;
        };
        window.iter().zip(magic).enumerate().all(|(i, (h, m))| {
            let mask = self.mask.as_ref().and_then(|k| k.get(i)).copied().unwrap_or(0xff);
            h & mask == m & mask
        })
    }

    fn fix_binary(&self) -> bool {
        self.flags.contains('F')
    }

    /// The registration line that recreates this entry, with `F`.
    fn registration_line(&self) -> String {
        let esc = |bytes: &[u8]| bytes.iter().map(|b| format!("\\x{b:02x}")).collect::<String>();
        let magic = self.magic.as_deref().unwrap_or_default();
        let mask = self.mask.as_deref().map(esc).unwrap_or_default();
        let offset = if self.offset == 0 { String::new() } else { self.offset.to_string() };
        format!(
            ":{}:M:{}:{}:{}:{}:{}",
            self.name,
            offset,
            esc(magic),
            mask,
            self.interpreter.display(),
            with_f(&self.flags)
        )
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn with_f(flags: &str) -> String {
    if flags.contains('F') {
        flags.to_string()
    } else {
        format!("{flags}F")
    }
}

/// A registration line (`:name:type:offset:magic:mask:interpreter:flags`, any delimiter),
/// split the way the kernel splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registration {
    delimiter: char,
    fields: Vec<String>,
}

impl Registration {
    fn parse(line: &str) -> Option<Registration> {
        let delimiter = line.chars().next()?;
        let fields: Vec<String> =
            line[delimiter.len_utf8()..].split(delimiter).map(str::to_string).collect();
        (fields.len() == 7 && fields[1] == "M").then_some(Registration { delimiter, fields })
    }
    fn name(&self) -> &str {
        &self.fields[0]
    }
    /// The entry the kernel would create from it (enabled), for matching before registering.
    fn entry(&self) -> Option<BinfmtEntry> {
        let offset = if self.fields[2].is_empty() { 0 } else { self.fields[2].parse().ok()? };
        let mask = unescape(&self.fields[4])?;
        Some(BinfmtEntry {
            name: self.fields[0].clone(),
            enabled: true,
            interpreter: PathBuf::from(&self.fields[5]),
            flags: self.fields[6].clone(),
            offset,
            magic: Some(unescape(&self.fields[3])?),
            mask: (!mask.is_empty()).then_some(mask),
        })
    }
    /// The line under `name`, with the `F` flag.
    fn line(&self, name: &str) -> String {
        let d = self.delimiter.to_string();
        let mut fields = self.fields.clone();
        fields[0] = name.to_string();
        fields[6] = with_f(&fields[6]);
        format!("{d}{}", fields.join(&d))
    }
}

/// Decodes the `\xNN` escapes (and `\\`) binfmt_misc accepts in magic and mask.
fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1)) {
            (b'\\', Some(b'x')) => {
                out.push(u8::from_str_radix(s.get(i + 2..i + 4)?, 16).ok()?);
                i += 4;
            }
            (b'\\', Some(b'\\')) => {
                out.push(b'\\');
                i += 2;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Whether `path` is an ELF program with a `PT_INTERP` header (dynamically linked). Anything
/// unreadable or not ELF is given the benefit of the doubt.
fn needs_loader(path: &Path) -> bool {
    // Program headers follow the ELF header; 64 KiB holds them, not the whole emulator.
    let mut bytes = Vec::new();
    let Ok(file) = fs::File::open(path) else { return false };
    if file.take(64 * 1024).read_to_end(&mut bytes).is_err() {
        return false;
    }
    let Some(b"\x7fELF") = bytes.get(..4) else { return false };
    let big = bytes.get(5) == Some(&2);
    let num = |at: usize, len: usize| -> Option<u64> {
        let raw = bytes.get(at..at + len)?;
        Some(raw.iter().enumerate().fold(0u64, |acc, (i, b)| {
            let shift = if big { 8 * (len - 1 - i) } else { 8 * i };
            acc | (u64::from(*b) << shift)
        }))
    };
    // (e_phoff, its size, e_phentsize, e_phnum) for ELFCLASS32 and ELFCLASS64.
    let (phoff, phentsize, phnum) = match bytes.get(4) {
        Some(1) => (num(28, 4), num(42, 2), num(44, 2)),
        Some(2) => (num(32, 8), num(54, 2), num(56, 2)),
        _ => return false,
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (phoff, phentsize, phnum) else {
        return false;
    };
    (0..phnum).any(|i| {
        let at = phoff.saturating_add(i * phentsize);
        usize::try_from(at).ok().and_then(|at| num(at, 4)) == Some(3) // PT_INTERP
    })
}

/// A `qemu-<arch>.conf` found in the binfmt.d directories.
struct Conf {
    path: PathBuf,
    registration: Registration,
}

fn find_conf(host: &Host, arch: &ElfArch) -> Option<Conf> {
    host.conf_dirs.iter().find_map(|dir| {
        let path = dir.join(format!("qemu-{}.conf", arch.qemu));
        let text = fs::read_to_string(&path).ok()?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))?;
        Some(Conf { registration: Registration::parse(line)?, path })
    })
}

/// Reads every entry of the binfmt_misc directory.
fn entries(dir: &Path, platform: &str) -> Result<Vec<BinfmtEntry>, SandboxError> {
    let setup = |step: String| {
        let platform = platform.to_string();
        move |source| SandboxError::EmulationSetup { platform, step, source }
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(setup(format!("reading {}", dir.display())))? {
        let e = e.map_err(setup(format!("reading {}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "register" || name == "status" {
            continue;
        }
        // An entry removed meanwhile is simply gone.
        let Ok(text) = fs::read_to_string(e.path()) else { continue };
        out.extend(BinfmtEntry::parse(&name, &text));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What a shell needs to register `line`: quoted for `printf`, which, unlike some `echo`s,
/// leaves the backslashes alone.
fn register_command(dir: &Path, line: &str) -> String {
    format!("printf '%s\\n' '{line}' > {}", dir.join("register").display())
}

fn ensure_in(
    platform: &Platform,
    host_platform: &Platform,
    host: &Host,
    ops: &mut dyn BinfmtOps,
) -> Result<Emulation, SandboxError> {
    let name = platform.to_string();
    if platform.os != "linux" {
        return Err(SandboxError::UnsupportedPlatform {
            platform: name,
            reason: "only linux programs can run in a step",
        });
    }
    if platform.architecture == host_platform.architecture && host_platform.os == "linux" {
        return Ok(Emulation::Native);
    }
    let Some(arch) = ElfArch::of(&platform.architecture) else {
        return Err(SandboxError::UnsupportedPlatform {
            platform: name,
            reason: "no emulator is known for this architecture (known: amd64, 386, arm64, arm, ppc64le, s390x, riscv64, mips64le)",
        });
    };
    let headers = [arch.header(2), arch.header(3)];
    let conf = find_conf(host, &arch);
    let dir = &host.binfmt;
    let install = format!(
        "apt-get install qemu-user-static (it provides /usr/lib/binfmt.d/qemu-{}.conf)",
        arch.qemu
    );
    // The command that registers the handler by hand, or what to install first.
    let register_fix = |mount_first: bool| {
        let mount = if mount_first {
            format!("mount -t binfmt_misc binfmt_misc {} && ", dir.display())
        } else {
            String::new()
        };
        match &conf {
            Some(c) => format!(
                "run strata as root once (it registers {} with the F flag), or as root: {mount}{}",
                c.path.display(),
                register_command(dir, &c.registration.line(c.registration.name()))
            ),
            None => format!("{install}, then run strata as root once (it registers that file with the F flag{})",
                if mount_first { ", mounting binfmt_misc first" } else { "" }),
        }
    };
    let unavailable = |reason: String, fix: String| SandboxError::NoEmulation {
        platform: platform.to_string(),
        reason,
        fix,
    };

    let register = dir.join("register");
    if !register.exists() {
        if !host.root {
            return Err(unavailable(
                format!("binfmt_misc is not mounted on {}", dir.display()),
                register_fix(true),
            ));
        }
        ops.mount(dir).map_err(|source| SandboxError::EmulationSetup {
            platform: name.clone(),
            step: format!("mount -t binfmt_misc binfmt_misc {}", dir.display()),
            source,
        })?;
    }
    if fs::read_to_string(dir.join("status")).is_ok_and(|s| s.trim() == "disabled") {
        return Err(unavailable(
            "binfmt_misc is disabled".into(),
            format!("as root: echo 1 > {}", dir.join("status").display()),
        ));
    }

    let found = |entries: &[BinfmtEntry]| -> Result<Option<Emulation>, SandboxError> {
        let matching: Vec<&BinfmtEntry> =
            entries.iter().filter(|e| e.enabled && headers.iter().all(|h| e.matches(h))).collect();
        // Which of several the kernel picks is not visible here, so every one must have F.
        if let Some(e) = matching.iter().find(|e| !e.fix_binary()) {
            let line = match &conf {
                Some(c) => c.registration.line(&e.name),
                None => e.registration_line(),
            };
            return Err(SandboxError::EmulationWithoutFixBinary {
                platform: name.clone(),
                handler: e.name.clone(),
                interpreter: e.interpreter.clone(),
                fix: format!(
                    "as root: echo -1 > {} && {}",
                    dir.join(&e.name).display(),
                    register_command(dir, &line)
                ),
            });
        }
        // With F the kernel loads the interpreter from the host, but a dynamic one's own
        // loader and libraries would still be looked up inside the step's root.
        if let Some(e) = matching.iter().find(|e| needs_loader(&e.interpreter)) {
            return Err(SandboxError::DynamicEmulator {
                platform: name.clone(),
                handler: e.name.clone(),
                interpreter: e.interpreter.clone(),
                fix: format!(
                    "{install}, then as root: echo -1 > {} && run strata as root once",
                    dir.join(&e.name).display()
                ),
            });
        }
        Ok(matching.first().map(|e| Emulation::Qemu {
            handler: e.name.clone(),
            interpreter: e.interpreter.clone(),
        }))
    };
    let current = entries(dir, &name)?;
    if let Some(emulation) = found(&current)? {
        return Ok(emulation);
    }

    let no_handler =
        format!("no enabled binfmt_misc handler in {} runs {} programs", dir.display(), arch.qemu);
    if !host.root {
        return Err(unavailable(no_handler, register_fix(false)));
    }
    let Some(conf) = &conf else {
        let looked = host.conf_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>();
        return Err(unavailable(
            format!(
                "{no_handler}, and there is no qemu-{}.conf in {}",
                arch.qemu,
                looked.join(", ")
            ),
            install,
        ));
    };
    if !conf.registration.entry().is_some_and(|e| headers.iter().all(|h| e.matches(h))) {
        return Err(unavailable(
            format!("{no_handler}, and {} does not match {} programs", conf.path.display(), arch.qemu),
            format!("reinstall qemu-user-static (apt-get install --reinstall qemu-user-static) or remove {}", conf.path.display()),
        ));
    }
    // A disabled or foreign entry may hold the name already.
    let taken = |n: &str| current.iter().any(|e| e.name == n) || dir.join(n).exists();
    let base = conf.registration.name().to_string();
    let handler = std::iter::once(base.clone())
        .chain((1..100).map(|i| {
            if i == 1 {
                format!("strata-{base}")
            } else {
                format!("strata-{base}-{i}")
            }
        }))
        .find(|n| !taken(n))
        .unwrap_or(base);
    let line = conf.registration.line(&handler);
    match ops.register(&register, &line) {
        Ok(()) => {}
        // Another build registered the same name first; look again.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(source) => {
            return Err(SandboxError::EmulationSetup {
                platform: name,
                step: register_command(dir, &line),
                source,
            })
        }
    }
    match found(&entries(dir, &name)?)? {
        Some(emulation) => Ok(emulation),
        None => Err(unavailable(
            format!("{no_handler}, even after registering {handler} from {}", conf.path.display()),
            format!("check `cat {}` and the kernel log", dir.join(&handler).display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AARCH64_LINE: &str = r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF";
    const RISCV64_LINE: &str = r":qemu-riscv64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/libexec/qemu-binfmt/riscv64-binfmt-P:OPF";

    fn amd64() -> Platform {
        Platform::new("linux", "amd64", None)
    }

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    /// What the kernel shows for a registered line.
    fn kernel_text(line: &str, enabled: bool) -> String {
        let e = Registration::parse(line).unwrap().entry().unwrap();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut s = format!(
            "{}\ninterpreter {}\nflags: {}\noffset {}\nmagic {}\n",
            if enabled { "enabled" } else { "disabled" },
            e.interpreter.display(),
            e.flags,
            e.offset,
            hex(e.magic.as_deref().unwrap())
        );
        if let Some(m) = &e.mask {
            s.push_str(&format!("mask {}\n", hex(m)));
        }
        s
    }

    /// A fake /proc/sys/fs/binfmt_misc (mounted or not) and binfmt.d directory.
    struct Fake {
        _tmp: tempfile::TempDir,
        host: Host,
    }

    impl Fake {
        fn new(mounted: bool, root: bool) -> Fake {
            let tmp = tempfile::tempdir().unwrap();
            let binfmt = tmp.path().join("binfmt_misc");
            let conf = tmp.path().join("binfmt.d");
            fs::create_dir(&binfmt).unwrap();
            fs::create_dir(&conf).unwrap();
            if mounted {
                fs::write(binfmt.join("register"), "").unwrap();
                fs::write(binfmt.join("status"), "enabled\n").unwrap();
            }
            Fake { _tmp: tmp, host: Host { binfmt, conf_dirs: vec![conf], root } }
        }
        fn entry(&self, line: &str, enabled: bool) -> &Self {
            let name = Registration::parse(line).unwrap().name().to_string();
            fs::write(self.host.binfmt.join(name), kernel_text(line, enabled)).unwrap();
            self
        }
        fn conf(&self, line: &str) -> &Self {
            let name = Registration::parse(line).unwrap().name().to_string();
            let text = format!("# from qemu-user-static\n{line}\n");
            fs::write(self.host.conf_dirs[0].join(format!("{name}.conf")), text).unwrap();
            self
        }
        fn ensure(&self, platform: &str, ops: &mut Recorder) -> Result<Emulation, SandboxError> {
            ensure_in(&p(platform), &amd64(), &self.host, ops)
        }
    }

    /// Records the calls and behaves like the kernel; `racer` makes `register` lose a race.
    #[derive(Default)]
    struct Recorder {
        mounts: Vec<PathBuf>,
        lines: Vec<String>,
        racer: bool,
    }

    impl BinfmtOps for Recorder {
        fn mount(&mut self, dir: &Path) -> io::Result<()> {
            self.mounts.push(dir.to_path_buf());
            fs::write(dir.join("register"), "")?;
            fs::write(dir.join("status"), "enabled\n")
        }
        fn register(&mut self, register: &Path, line: &str) -> io::Result<()> {
            self.lines.push(line.to_string());
            let name = Registration::parse(line).unwrap().name().to_string();
            let path = register.parent().unwrap().join(name);
            if self.racer {
                fs::write(&path, kernel_text(line, true))?;
            }
            if path.exists() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            fs::write(path, kernel_text(line, true))
        }
    }

    #[test]
    fn entries_parse_like_the_kernel_prints_them() {
        let text = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\noffset 0\nmagic 7f454c46\nmask ffffff00\n";
        let e = BinfmtEntry::parse("qemu-aarch64", text).unwrap();
        assert!(e.enabled && e.fix_binary());
        assert_eq!(e.interpreter, Path::new("/usr/libexec/qemu-binfmt/aarch64-binfmt-P"));
        assert_eq!(e.magic.as_deref(), Some(&[0x7f, 0x45, 0x4c, 0x46][..]));
        assert_eq!(e.mask.as_deref(), Some(&[0xff, 0xff, 0xff, 0][..]));
        let ext = BinfmtEntry::parse(
            "py",
            "disabled\ninterpreter /usr/bin/python3\nflags: \nextension .pyc\n",
        )
        .unwrap();
        assert!(!ext.enabled && !ext.fix_binary() && ext.magic.is_none());
        assert!(!ext.matches(&ElfArch::of("arm64").unwrap().header(2)));
        assert_eq!(BinfmtEntry::parse("x", "1\n"), None);
    }

    #[test]
    fn magic_and_mask_tell_arm64_from_riscv64() {
        let aarch64 = Registration::parse(AARCH64_LINE).unwrap().entry().unwrap();
        let riscv64 = Registration::parse(RISCV64_LINE).unwrap().entry().unwrap();
        let arm64 = ElfArch::of("arm64").unwrap();
        let rv = ElfArch::of("riscv64").unwrap();
        for t in [2, 3] {
            assert!(aarch64.matches(&arm64.header(t)));
            assert!(!aarch64.matches(&rv.header(t)));
            assert!(riscv64.matches(&rv.header(t)));
            assert!(!riscv64.matches(&arm64.header(t)));
        }
        // The mask ignores EI_OSABI (byte 7) and the low bit of e_type; not e_machine.
        let mut h = arm64.header(2);
        h[7] = 3;
        assert!(aarch64.matches(&h));
        h[18] = 0xb6;
        assert!(!aarch64.matches(&h));
        // Big endian puts e_machine the other way round.
        assert_eq!(&ElfArch::of("s390x").unwrap().header(2)[16..20], &[0, 2, 0, 22]);
        // The kernel's hex text reads back to the escaped line's bytes.
        let text = kernel_text(AARCH64_LINE, true);
        assert_eq!(BinfmtEntry::parse("qemu-aarch64", &text).unwrap(), aarch64);
        assert_eq!(aarch64.registration_line(), AARCH64_LINE);
    }

    #[test]
    fn the_hosts_architecture_is_native_and_others_are_unsupported_or_emulated() {
        let fake = Fake::new(true, false);
        let mut ops = Recorder::default();
        assert_eq!(fake.ensure("linux/amd64", &mut ops).unwrap(), Emulation::Native);
        let err = fake.ensure("linux/sparc64", &mut ops).unwrap_err();
        assert!(
            matches!(&err, SandboxError::UnsupportedPlatform { platform, .. } if platform == "linux/sparc64"),
            "{err}"
        );
        let err = fake.ensure("windows/amd64", &mut ops).unwrap_err();
        assert!(
            matches!(&err, SandboxError::UnsupportedPlatform { platform, .. } if platform == "windows/amd64"),
            "{err}"
        );
        fake.entry(AARCH64_LINE, true);
        assert_eq!(
            fake.ensure("linux/arm64/v8", &mut ops).unwrap(),
            Emulation::Qemu {
                handler: "qemu-aarch64".into(),
                interpreter: "/usr/libexec/qemu-binfmt/aarch64-binfmt-P".into()
            }
        );
        assert!(ops.mounts.is_empty() && ops.lines.is_empty());
    }

    #[test]
    fn disabled_and_foreign_entries_are_ignored_and_the_error_says_what_to_run() {
        let fake = Fake::new(true, false);
        fake.entry(AARCH64_LINE, false).entry(RISCV64_LINE, true).conf(AARCH64_LINE);
        let err = fake.ensure("linux/arm64", &mut Recorder::default()).unwrap_err();
        let SandboxError::NoEmulation { platform, reason, fix } = &err else { panic!("{err}") };
        assert_eq!(platform, "linux/arm64");
        assert!(reason.contains("no enabled binfmt_misc handler"), "{reason}");
        assert!(fix.contains(&format!("printf '%s\\n' '{AARCH64_LINE}' >")), "{fix}");
        let msg = err.to_string();
        assert_eq!(msg.matches("linux/arm64").count(), 1, "{msg}");
        // Without the conf the fix is to install it.
        let bare = Fake::new(false, false);
        let err = bare.ensure("linux/riscv64", &mut Recorder::default()).unwrap_err();
        let SandboxError::NoEmulation { reason, fix, .. } = &err else { panic!("{err}") };
        assert!(reason.contains("not mounted"), "{reason}");
        assert!(fix.starts_with("apt-get install qemu-user-static"), "{fix}");
    }

    #[test]
    fn a_matching_handler_without_f_is_reported_with_the_commands() {
        let fake = Fake::new(true, true);
        let no_f = AARCH64_LINE.replace(":OPF", ":OC");
        fake.entry(&no_f, true);
        let mut ops = Recorder::default();
        let err = fake.ensure("linux/arm64", &mut ops).unwrap_err();
        let SandboxError::EmulationWithoutFixBinary { platform, handler, fix, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!((platform.as_str(), handler.as_str()), ("linux/arm64", "qemu-aarch64"));
        let entry = fake.host.binfmt.join("qemu-aarch64");
        assert!(fix.contains(&format!("echo -1 > {}", entry.display())), "{fix}");
        assert!(fix.contains(&AARCH64_LINE.replace(":OPF", ":OCF")), "{fix}");
        assert!(ops.lines.is_empty(), "never replaces someone else's handler");
    }

    /// A 64-bit little-endian ELF file with one program header of type `p_type`.
    fn elf_with_program_header(p_type: u32) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56];
        f[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        f[64..68].copy_from_slice(&p_type.to_le_bytes());
        f
    }

    #[test]
    fn a_dynamically_linked_emulator_is_refused() {
        let fake = Fake::new(true, true);
        let dynamic = fake.host.binfmt.parent().unwrap().join("qemu-aarch64");
        fs::write(&dynamic, elf_with_program_header(3)).unwrap();
        let line = AARCH64_LINE
            .replace("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", dynamic.to_str().unwrap());
        fake.entry(&line, true);
        let err = fake.ensure("linux/arm64", &mut Recorder::default()).unwrap_err();
        let SandboxError::DynamicEmulator { handler, fix, .. } = &err else { panic!("{err}") };
        assert_eq!(handler, "qemu-aarch64");
        assert!(fix.starts_with("apt-get install qemu-user-static"), "{fix}");
        // PT_LOAD only: static, accepted.
        fs::write(&dynamic, elf_with_program_header(1)).unwrap();
        let got = fake.ensure("linux/arm64", &mut Recorder::default()).unwrap();
        assert_eq!(got, Emulation::Qemu { handler: "qemu-aarch64".into(), interpreter: dynamic });
        assert!(!needs_loader(Path::new("/nonexistent")));
    }

    #[test]
    fn as_root_it_mounts_and_registers_the_conf_with_f() {
        let fake = Fake::new(false, true);
        fake.conf(&AARCH64_LINE.replace(":OPF", ":OP"));
        let mut ops = Recorder::default();
        let got = fake.ensure("linux/arm64", &mut ops).unwrap();
        assert_eq!(ops.mounts, vec![fake.host.binfmt.clone()]);
        assert_eq!(ops.lines, vec![AARCH64_LINE.to_string()]);
        assert!(matches!(got, Emulation::Qemu { handler, .. } if handler == "qemu-aarch64"));
        // Registered now: a second call finds it.
        let mut again = Recorder::default();
        fake.ensure("linux/arm64", &mut again).unwrap();
        assert!(again.lines.is_empty() && again.mounts.is_empty());
    }

    #[test]
    fn a_disabled_entry_keeps_its_name_and_the_new_one_gets_another() {
        let fake = Fake::new(true, true);
        fake.entry(AARCH64_LINE, false).conf(AARCH64_LINE);
        let mut ops = Recorder::default();
        let got = fake.ensure("linux/arm64", &mut ops).unwrap();
        assert!(matches!(got, Emulation::Qemu { handler, .. } if handler == "strata-qemu-aarch64"));
        assert!(ops.lines[0].starts_with(":strata-qemu-aarch64:M::"));
    }

    #[test]
    fn losing_a_registration_race_is_success() {
        let fake = Fake::new(true, true);
        fake.conf(AARCH64_LINE);
        let mut ops = Recorder { racer: true, ..Recorder::default() };
        let got = fake.ensure("linux/arm64", &mut ops).unwrap();
        assert!(matches!(got, Emulation::Qemu { handler, .. } if handler == "qemu-aarch64"));
    }

    #[test]
    fn as_root_without_qemu_user_static_it_says_to_install_it() {
        let fake = Fake::new(true, true);
        let err = fake.ensure("linux/s390x", &mut Recorder::default()).unwrap_err();
        let SandboxError::NoEmulation { fix, reason, .. } = &err else { panic!("{err}") };
        assert!(reason.contains("no qemu-s390x.conf in"), "{reason}");
        assert!(fix.starts_with("apt-get install qemu-user-static"), "{fix}");
        // A conf for another machine is not registered.
        fake.conf(&RISCV64_LINE.replace("qemu-riscv64", "qemu-s390x"));
        let mut ops = Recorder::default();
        let err = fake.ensure("linux/s390x", &mut ops).unwrap_err();
        assert!(
            matches!(&err, SandboxError::NoEmulation { reason, .. } if reason.contains("does not match")),
            "{err}"
        );
        assert!(ops.lines.is_empty());
    }
}
