//! Resolves who a container's process runs as: the CRI security context
//! (run_as_user, run_as_username, run_as_group, supplemental_groups) over
//! the image's USER, looked up in the container's own /etc/passwd and
//! /etc/group, as containerd does.
//!
//! The files are read with `openat2(RESOLVE_IN_ROOT)`, so a hostile image
//! whose /etc/passwd is a symlink to a host path resolves inside the rootfs
//! and never reads the host's files.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::Path;

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

use super::config::SecurityContext;
use super::spec::ResolvedUser;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} not found in the container's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the container's /etc/group")]
    UnknownGroup(String),
    #[error("cannot read {path} in the container: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads a file inside `root` (the mounted rootfs), resolving every path
/// component inside it. A missing file reads as empty.
fn read_in_root(root: &Path, path: &'static str) -> Result<String, UserError> {
    let read_err = |source| UserError::Read { path, source };
    let dir = std::fs::File::open(root).map_err(read_err)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = match openat2(dir.as_fd(), path, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(read_err(e.into())),
    };
    let mut text = String::new();
    // Bound what a hostile image can make us read.
    std::fs::File::from(fd)
        .take(4 << 20)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    Ok(text)
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_owned();
            let _password = f.next()?;
            let uid = f.next()?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(PasswdEntry { name, uid, gid })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_owned();
            let _password = f.next()?;
            let gid = f.next()?.parse().ok()?;
            let members = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some(GroupEntry { name, gid, members })
        })
        .collect()
}

/// Who the process runs as. `image_user` is the image's USER
/// (`uid`, `uid:gid`, `name`, `name:group`, or empty for root).
pub fn resolve(
    rootfs: &Path,
    image_user: &str,
    security: &SecurityContext,
) -> Result<ResolvedUser, UserError> {
    let passwd = parse_passwd(&read_in_root(rootfs, "/etc/passwd")?);
    let groups = parse_group(&read_in_root(rootfs, "/etc/group")?);

    let run_as_user = security.run_as_user;
    let run_as_username = Some(security.run_as_username.as_str()).filter(|s| !s.is_empty());
    let run_as_group = security.run_as_group;

    // The user part: security context first, then the image.
    let (user_part, group_part) = match (run_as_user, run_as_username) {
        (Some(uid), _) => (uid.to_string(), None),
        (None, Some(name)) => (name.to_owned(), None),
        (None, None) => match image_user.split_once(':') {
            Some((u, g)) => (u.to_owned(), Some(g.to_owned())),
            None => (image_user.to_owned(), None),
        },
    };

    let (uid, mut gid, username) = if user_part.is_empty() {
        (0, 0, Some("root".to_owned()))
    } else if let Ok(uid) = user_part.parse::<u32>() {
        match passwd.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.clone())),
            None => (uid, 0, None),
        }
    } else {
        let entry = passwd
            .iter()
            .find(|e| e.name == user_part)
            .ok_or_else(|| UserError::UnknownUser(user_part.clone()))?;
        (entry.uid, entry.gid, Some(entry.name.clone()))
    };

    if let Some(group) = group_part.filter(|g| !g.is_empty()) {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                groups
                    .iter()
                    .find(|g| g.name == group)
                    .ok_or(UserError::UnknownGroup(group))?
                    .gid
            }
        };
    }
    if let Some(g) = run_as_group.and_then(|g| u32::try_from(g).ok()) {
        gid = g;
    }

    let mut additional_gids: Vec<u32> = Vec::new();
    // `Strict`: only the groups the CRI sends; `Merge` (the default): the
    // user's groups in the image's /etc/group as well (KEP-3619).
    let strict = security.supplemental_groups_policy == "Strict";
    if let Some(name) = username.as_ref().filter(|_| !strict) {
        for g in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            additional_gids.push(g.gid);
        }
    }
    additional_gids.extend(
        security
            .supplemental_groups
            .iter()
            .filter_map(|g| u32::try_from(*g).ok()),
    );
    additional_gids.retain(|g| *g != gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();

    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:1000:1001::/home/www:/bin/sh\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:1001:\nextra:x:2000:www,other\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn image_user_forms() {
        let r = rootfs();
        let root = resolve(r.path(), "", &SecurityContext::default()).unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let www = resolve(r.path(), "www", &SecurityContext::default()).unwrap();
        assert_eq!(
            (www.uid, www.gid, www.additional_gids),
            (1000, 1001, vec![2000])
        );
        let numeric = resolve(r.path(), "1000", &SecurityContext::default()).unwrap();
        assert_eq!((numeric.uid, numeric.gid), (1000, 1001));
        let unknown_uid = resolve(r.path(), "4242:7", &SecurityContext::default()).unwrap();
        assert_eq!((unknown_uid.uid, unknown_uid.gid), (4242, 7));
        let named_group = resolve(r.path(), "www:extra", &SecurityContext::default()).unwrap();
        assert_eq!(named_group.gid, 2000);
        assert!(matches!(
            resolve(r.path(), "nobody-here", &SecurityContext::default()),
            Err(UserError::UnknownUser(_))
        ));
    }

    #[test]
    fn security_context_wins() {
        let r = rootfs();
        let sc = SecurityContext {
            run_as_user: Some(1000),
            run_as_group: Some(3000),
            supplemental_groups: vec![5, 3000],
            ..Default::default()
        };
        let u = resolve(r.path(), "root", &sc).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 3000));
        assert_eq!(u.additional_gids, vec![5, 2000]);
    }

    #[test]
    fn strict_policy_leaves_out_the_image_groups() {
        let r = rootfs();
        let mut sc = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![1234],
            ..Default::default()
        };
        let merge = resolve(r.path(), "", &sc).unwrap();
        assert_eq!((merge.gid, merge.additional_gids), (1001, vec![1234, 2000]));
        sc.supplemental_groups_policy = "Strict".into();
        let strict = resolve(r.path(), "", &sc).unwrap();
        assert_eq!((strict.gid, &strict.additional_gids), (1001, &vec![1234]));
        assert_eq!(strict.groups(), vec![1001, 1234]);
    }

    #[test]
    fn passwd_symlink_cannot_escape_the_rootfs() {
        let r = tempfile::tempdir().unwrap();
        std::fs::create_dir(r.path().join("etc")).unwrap();
        // Points at the host's passwd if followed outside the root.
        std::os::unix::fs::symlink("/etc/passwd", r.path().join("etc/passwd")).unwrap();
        // Inside the root, /etc/passwd is the link itself: a loop-free miss.
        assert!(matches!(
            resolve(r.path(), "root", &SecurityContext::default()),
            Err(UserError::UnknownUser(_)) | Err(UserError::Read { .. })
        ));
    }
}
