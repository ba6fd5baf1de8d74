//! Resolving a `USER` string against the image's own `/etc/passwd` and `/etc/group`.
//!
//! The rules follow what Docker (runc's `GetExecUser`) does, because images are written
//! against them: a name must exist in passwd; a number needs no entry (but one is used when
//! present); the primary group is the passwd entry's unless `:group` is given; supplementary
//! groups are those in `/etc/group` listing the user by name, and only when no group was
//! given explicitly. Malformed lines are skipped, as libc does.

use std::path::Path;

use crate::SandboxError;

/// uid, primary gid and supplementary gids of the step's process.
pub(crate) type Ids = (u32, u32, Vec<u32>);

/// Resolves `user` (`""`, `name`, `uid`, `name:group`, `uid:gid`, mixed) with the passwd
/// and group files of the root filesystem at `rootfs_dir` (read inside it: a symlink in it
/// never leads out).
///
/// `""` means root: uid 0, gid 0 and root's supplementary groups from `/etc/group` (as
/// `docker run` shows them). Missing passwd/group files are treated as empty.
pub fn resolve_user(rootfs_dir: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), SandboxError> {
    let passwd = read_in_root(rootfs_dir, "etc/passwd")?;
    let group = read_in_root(rootfs_dir, "etc/group")?;
    resolve_user_in(&passwd, &group, user).map_err(|e| match e {
        SandboxError::UnknownUser { user, .. } => {
            SandboxError::UnknownUser { user, passwd: rootfs_dir.join("etc/passwd") }
        }
        SandboxError::UnknownGroup { group, .. } => {
            SandboxError::UnknownGroup { group, group_file: rootfs_dir.join("etc/group") }
        }
        other => other,
    })
}

/// Resolves `user` with the contents of an image's `/etc/passwd` and `/etc/group` (empty
/// when the image has none), by Docker's rules (module docs). For an image that is a stack
/// of layers, read the two files through the stack (strata-layer's overlay model) and pass
/// the result as [`User::Ids`](crate::User::Ids).
pub fn resolve_user_in(passwd: &str, group: &str, user: &str) -> Result<Ids, SandboxError> {
    resolve_in(passwd, group, user).map_err(|e| match e {
        Unresolved::User(u) => SandboxError::UnknownUser { user: u, passwd: "/etc/passwd".into() },
        Unresolved::Group(g) => {
            SandboxError::UnknownGroup { group: g, group_file: "/etc/group".into() }
        }
        Unresolved::Spec => SandboxError::BadUserSpec { user: user.to_string() },
    })
}

/// The content of `rel` inside `root` (resolved as if `root` were `/`), or `""` when there is
/// no such regular file.
fn read_in_root(root: &Path, rel: &str) -> Result<String, SandboxError> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    let shown = root.join(rel);
    let io = |e: rustix::io::Errno| SandboxError::Io {
        action: "reading",
        path: shown.clone(),
        source: e.into(),
    };
    let dir =
        rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(io)?;
    let flags = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    let open = |oflags: OFlags| {
        crate::sys::openat2_retrying(&dir, rel, oflags | OFlags::CLOEXEC, Mode::empty(), flags)
    };
    let fd = match open(OFlags::PATH) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(String::new()),
        Err(e) => return Err(io(e)),
    };
    if FileType::from_raw_mode(rustix::fs::fstat(&fd).map_err(io)?.st_mode) != FileType::RegularFile
    {
        return Ok(String::new());
    }
    let mut file = std::fs::File::from(open(OFlags::RDONLY).map_err(io)?);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(|source| SandboxError::Io {
        action: "reading",
        path: shown.clone(),
        source,
    })?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[derive(Debug, PartialEq)]
enum Unresolved {
    User(String),
    Group(String),
    Spec,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        (!name.is_empty() && !name.starts_with('#')).then_some(PasswdEntry { name, uid, gid })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members =
            f.next().unwrap_or("").split(',').map(str::trim).filter(|m| !m.is_empty()).collect();
        (!name.is_empty() && !name.starts_with('#')).then_some(GroupEntry { name, gid, members })
    })
}

fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<Ids, Unresolved> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if group_part.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(Unresolved::Spec);
    }
    let user_part = if user_part.is_empty() {
        if group_part.is_some() {
            return Err(Unresolved::Spec);
        }
        "0"
    } else {
        user_part
    };

    let (uid, mut gid, name) = if let Ok(uid) = user_part.parse::<u32>() {
        match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name)),
            None => (uid, 0, None),
        }
    } else {
        match passwd_entries(passwd).find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, Some(e.name)),
            None => return Err(Unresolved::User(user_part.to_string())),
        }
    };

    let mut groups = Vec::new();
    match group_part {
        Some(g) => {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => group_entries(group)
                    .find(|e| e.name == g)
                    .map(|e| e.gid)
                    .ok_or_else(|| Unresolved::Group(g.to_string()))?,
            };
        }
        None => {
            if let Some(name) = name {
                for e in group_entries(group) {
                    if e.members.contains(&name) && !groups.contains(&e.gid) {
                        groups.push(e.gid);
                    }
                }
            }
        }
    }
    if group_part.is_none() && !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    if group_part.is_some() {
        groups.push(gid);
    }
    Ok((uid, gid, groups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        broken line\n\
        app:x:1000:1000::/home/app:/bin/sh\n\
        daemon:x:2:2::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\n\
        wheel:x:10:root\n\
        app:x:1000:\n\
        extra:x:2000:app,daemon\n\
        more:x:3000: app \n";

    fn r(spec: &str) -> Result<Ids, Unresolved> {
        resolve_in(PASSWD, GROUP, spec)
    }

    #[test]
    fn empty_is_root_with_roots_groups() {
        assert_eq!(r(""), Ok((0, 0, vec![0, 10])));
    }

    #[test]
    fn name_gets_primary_and_member_groups() {
        assert_eq!(r("app"), Ok((1000, 1000, vec![1000, 2000, 3000])));
    }

    #[test]
    fn uid_with_entry_uses_entry() {
        assert_eq!(r("1000"), Ok((1000, 1000, vec![1000, 2000, 3000])));
    }

    #[test]
    fn uid_without_entry_is_fine() {
        assert_eq!(r("4242"), Ok((4242, 0, vec![0])));
        assert_eq!(r("4242:77"), Ok((4242, 77, vec![77])));
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        assert_eq!(r("app:extra"), Ok((1000, 2000, vec![2000])));
        assert_eq!(r("app:5"), Ok((1000, 5, vec![5])));
        assert_eq!(r("0:app"), Ok((0, 1000, vec![1000])));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert_eq!(r("nobody"), Err(Unresolved::User("nobody".into())));
        assert_eq!(r("app:nogroup"), Err(Unresolved::Group("nogroup".into())));
        assert_eq!(r("app:"), Err(Unresolved::Spec));
        assert_eq!(r(":app"), Err(Unresolved::Spec));
        assert_eq!(r("a:b:c"), Err(Unresolved::Spec));
    }

    #[test]
    fn public_resolve_user_reads_a_rootfs() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("etc")).unwrap();
        fs::write(root.path().join("etc/passwd"), PASSWD).unwrap();
        fs::write(root.path().join("etc/group"), GROUP).unwrap();
        assert_eq!(resolve_user(root.path(), "app").unwrap(), (1000, 1000, vec![1000, 2000, 3000]));
        let err = resolve_user(root.path(), "ghost").unwrap_err();
        assert!(err.to_string().contains("etc/passwd"), "{err}");
    }
}
