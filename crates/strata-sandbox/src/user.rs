//! Resolving a `USER` string against the image's own `/etc/passwd` and `/etc/group`.
//!
//! The rules follow what Docker (runc's `GetExecUser`) does, because images are written
//! against them: a name must exist in passwd; a number needs no entry (but one is used when
//! present); the primary group is the passwd entry's unless `:group` is given; supplementary
//! groups are those in `/etc/group` listing the user by name, and only when no group was
//! given explicitly. Malformed lines are skipped, as libc does.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::SandboxError;

/// uid, primary gid and supplementary gids of the step's process.
pub(crate) type Ids = (u32, u32, Vec<u32>);

/// Resolves `user` (`""`, `name`, `uid`, `name:group`, `uid:gid`, mixed) with the passwd
/// and group files of the root filesystem at `rootfs_dir`.
///
/// `""` means root: uid 0, gid 0 and root's supplementary groups from `/etc/group` (as
/// `docker run` shows them). Missing passwd/group files are treated as empty.
pub fn resolve_user(rootfs_dir: &Path, user: &str) -> Result<(u32, u32, Vec<u32>), SandboxError> {
    resolve_user_layered(&[rootfs_dir.to_path_buf()], user)
}

/// Like [`resolve_user`], for a stack of layer directories given TOP first: a file is taken
/// from the highest layer that has it, and a whiteout (char device 0/0) hides lower copies.
pub(crate) fn resolve_user_layered(
    layers_top_first: &[PathBuf],
    user: &str,
) -> Result<Ids, SandboxError> {
    let passwd_path = find_in_layers(layers_top_first, "etc/passwd");
    let group_path = find_in_layers(layers_top_first, "etc/group");
    let passwd = read_optional(passwd_path.as_deref())?;
    let group = read_optional(group_path.as_deref())?;
    let shown = |p: Option<PathBuf>| {
        p.unwrap_or_else(|| {
            layers_top_first
                .first()
                .map(|d| d.join("etc/passwd"))
                .unwrap_or_else(|| PathBuf::from("/etc/passwd"))
        })
    };
    resolve_in(&passwd, &group, user).map_err(|e| match e {
        Unresolved::User(u) => {
            SandboxError::UnknownUser { user: u, passwd: shown(passwd_path.clone()) }
        }
        Unresolved::Group(g) => SandboxError::UnknownGroup {
            group: g,
            group_file: group_path.clone().unwrap_or_else(|| shown(None).with_file_name("group")),
        },
        Unresolved::Spec => SandboxError::BadUserSpec { user: user.to_string() },
    })
}

/// Host path of `rel` in a layer stack (top first), honouring whiteouts; only regular files count.
pub(crate) fn find_in_layers(layers_top_first: &[PathBuf], rel: &str) -> Option<PathBuf> {
    for dir in layers_top_first {
        let p = dir.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_char_device() && m.rdev() == 0 => return None,
            Ok(m) if m.is_file() => return Some(p),
            Ok(_) => return None,
            Err(_) => continue,
        }
    }
    None
}

fn read_optional(path: Option<&Path>) -> Result<String, SandboxError> {
    let Some(path) = path else { return Ok(String::new()) };
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => {
            Err(SandboxError::Io { action: "reading", path: path.to_path_buf(), source })
        }
    }
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
    fn layered_lookup_honours_top_layer_and_whiteouts() {
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        fs::create_dir_all(bottom.path().join("etc")).unwrap();
        fs::create_dir_all(top.path().join("etc")).unwrap();
        fs::write(bottom.path().join("etc/passwd"), "app:x:1:1::/:/bin/sh\n").unwrap();
        let layers = [top.path().to_path_buf(), bottom.path().to_path_buf()];
        assert_eq!(resolve_user_layered(&layers, "app").unwrap(), (1, 1, vec![1]));
        fs::write(top.path().join("etc/passwd"), "app:x:7:7::/:/bin/sh\n").unwrap();
        assert_eq!(resolve_user_layered(&layers, "app").unwrap(), (7, 7, vec![7]));
        fs::remove_file(top.path().join("etc/passwd")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.path().join("etc/passwd"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            0,
        )
        .unwrap();
        let err = resolve_user_layered(&layers, "app").unwrap_err();
        assert!(matches!(err, SandboxError::UnknownUser { .. }), "{err}");
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
