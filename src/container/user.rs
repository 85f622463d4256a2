//! The user a container's process runs as, resolved as containerd resolves it: the CRI's
//! `run_as_username` / `run_as_user` / `run_as_group`, else the image's `User`
//! (`name`, `uid`, `name:group`, `uid:gid`), looked up in the image's `/etc/passwd` and
//! `/etc/group` (given as text: reading them is the caller's business).

use super::config::{SecurityContext, SupplementalGroupsPolicy};
use super::spec::SpecError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// `name:password:uid:gid:gecos:home:shell` lines; malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].trim().parse().ok()?,
                gid: f[3].trim().parse().ok()?,
            })
        })
        .collect()
}

/// `name:password:gid:member,member` lines; malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// The process's credentials: `additional_gids` always holds the primary gid too (as
/// containerd writes it), sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// An id as containerd accepts one in a user string: 0 ..= i32::MAX.
fn numeric_id(s: &str) -> Option<u32> {
    s.parse::<i64>()
        .ok()
        .filter(|v| (0..=i64::from(i32::MAX)).contains(v))
        .map(|v| v as u32)
}

/// containerd's `GenerateUserString`: the username (else the uid), `:gid` when a group is
/// given; `None` when the CRI names no user.
fn cri_user_string(sc: &SecurityContext) -> Result<Option<String>, SpecError> {
    let mut user = sc.run_as_user.map(|u| u.to_string()).unwrap_or_default();
    if !sc.run_as_username.is_empty() {
        user = sc.run_as_username.clone();
    }
    let group = sc.run_as_group.map(|g| g.to_string());
    match (user.is_empty(), group) {
        (true, Some(g)) => Err(SpecError::InvalidArgument(format!(
            "run_as_group {g} is specified without run_as_user or run_as_username"
        ))),
        (true, None) => Ok(None),
        (false, Some(g)) => Ok(Some(format!("{user}:{g}"))),
        (false, None) => Ok(Some(user)),
    }
}

struct Files {
    passwd: Option<Vec<PasswdEntry>>,
    group: Option<Vec<GroupEntry>>,
}

impl Files {
    fn user_by_name(&self, name: &str) -> Result<&PasswdEntry, SpecError> {
        self.passwd
            .as_ref()
            .and_then(|p| p.iter().find(|u| u.name == name))
            .ok_or_else(|| {
                SpecError::NotFound(format!(
                    "user {name:?} not found in the image's /etc/passwd"
                ))
            })
    }

    fn user_by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.passwd.as_ref()?.iter().find(|u| u.uid == uid)
    }

    fn gid_by_name(&self, name: &str) -> Result<u32, SpecError> {
        self.group
            .as_ref()
            .and_then(|g| g.iter().find(|g| g.name == name))
            .map(|g| g.gid)
            .ok_or_else(|| {
                SpecError::NotFound(format!(
                    "group {name:?} not found in the image's /etc/group"
                ))
            })
    }

    /// Groups that list `user` as a member, but not the one named like the user
    /// (containerd's `WithAdditionalGIDs`).
    fn member_gids(&self, user: &str) -> Vec<u32> {
        self.group
            .iter()
            .flatten()
            .filter(|g| g.name != user && g.members.iter().any(|m| m == user))
            .map(|g| g.gid)
            .collect()
    }
}

/// containerd's `oci.WithUser`: uid and primary gid from a user string.
fn uid_gid(userstr: &str, files: &Files) -> Result<(u32, u32), SpecError> {
    let parts: Vec<&str> = userstr.split(':').collect();
    match parts.as_slice() {
        [user] => match numeric_id(user) {
            // A uid the image does not know is fine: gid 0.
            Some(uid) => Ok((uid, files.user_by_uid(uid).map_or(0, |u| u.gid))),
            None => {
                let u = files.user_by_name(user)?;
                Ok((u.uid, u.gid))
            }
        },
        [user, group] => {
            let uid = match numeric_id(user) {
                Some(uid) => uid,
                None => files.user_by_name(user)?.uid,
            };
            let gid = match numeric_id(group) {
                Some(gid) => gid,
                None => files.gid_by_name(group)?,
            };
            Ok((uid, gid))
        }
        _ => Err(SpecError::InvalidArgument(format!(
            "invalid user {userstr:?}: expected user, uid, user:group or uid:gid"
        ))),
    }
}

/// Resolves the container's user. `image_user` is the image config's `User`; `passwd`
/// and `group` the image's files (`None` when the image has none).
pub fn resolve(
    sc: &SecurityContext,
    image_user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, SpecError> {
    let files = Files {
        passwd: passwd.map(parse_passwd),
        group: group.map(parse_group),
    };
    for (what, id) in [
        ("run_as_user", sc.run_as_user),
        ("run_as_group", sc.run_as_group),
    ] {
        if let Some(v) = id
            && !(0..=i64::from(i32::MAX)).contains(&v)
        {
            return Err(SpecError::InvalidArgument(format!(
                "{what} {v} is out of range (0 to {})",
                i32::MAX
            )));
        }
    }
    let cri_user = cri_user_string(sc)?;
    let userstr = cri_user.unwrap_or_else(|| image_user.to_string());
    let (uid, gid) = if userstr.is_empty() {
        (0, 0)
    } else {
        uid_gid(&userstr, &files)?
    };

    let mut gids = vec![gid];
    if sc.supplemental_groups_policy == SupplementalGroupsPolicy::Merge {
        // The user whose memberships count: the CRI's, else the image's user part.
        let who = if !sc.run_as_username.is_empty() {
            sc.run_as_username.clone()
        } else if let Some(u) = sc.run_as_user {
            u.to_string()
        } else {
            let u = image_user.split(':').next().unwrap_or_default();
            if u.is_empty() { "0".into() } else { u.into() }
        };
        let name = match numeric_id(&who) {
            Some(uid) => files.user_by_uid(uid).map(|u| u.name.clone()),
            None => Some(who),
        };
        if let Some(name) = name {
            gids.extend(files.member_gids(&name));
        }
    }
    for g in &sc.supplemental_groups {
        let g = u32::try_from(*g).map_err(|_| {
            SpecError::InvalidArgument(format!("supplemental group {g} is out of range"))
        })?;
        gids.push(g);
    }
    gids.sort_unstable();
    gids.dedup();
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids: gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
# a comment
www:x:33:33:www-data:/var/www:/bin/false
alice:x:1000:1000::/home/alice:/bin/sh
broken line
";
    const GROUP: &str = "root:x:0:
wheel:x:10:root,alice
www:x:33:
alice:x:1000:alice
audio:x:29:alice
video:x:44:bob
";

    fn sc() -> SecurityContext {
        SecurityContext::default()
    }

    fn r(sc: &SecurityContext, image_user: &str) -> Result<ResolvedUser, SpecError> {
        resolve(sc, image_user, Some(PASSWD), Some(GROUP))
    }

    fn ids(u: &ResolvedUser) -> (u32, u32, Vec<u32>) {
        (u.uid, u.gid, u.additional_gids.clone())
    }

    #[test]
    fn parsing_skips_junk() {
        let p = parse_passwd(PASSWD);
        assert_eq!(p.len(), 4);
        assert_eq!(p[3].name, "alice");
        let g = parse_group(GROUP);
        assert_eq!(g[1].members, vec!["root", "alice"]);
        assert!(g[0].members.is_empty());
    }

    #[test]
    fn default_is_root_with_roots_groups() {
        assert_eq!(ids(&r(&sc(), "").unwrap()), (0, 0, vec![0, 10]));
    }

    #[test]
    fn image_user_forms() {
        // name: uid and gid from passwd, memberships from group (not the group named
        // like the user).
        assert_eq!(
            ids(&r(&sc(), "alice").unwrap()),
            (1000, 1000, vec![10, 29, 1000])
        );
        // uid known to passwd: its gid and name-based memberships.
        assert_eq!(
            ids(&r(&sc(), "1000").unwrap()),
            (1000, 1000, vec![10, 29, 1000])
        );
        // uid unknown to passwd is fine: gid 0, no memberships.
        assert_eq!(ids(&r(&sc(), "4242").unwrap()), (4242, 0, vec![0]));
        // name:group — the group from /etc/group, not the user's passwd gid.
        assert_eq!(
            ids(&r(&sc(), "alice:www").unwrap()),
            (1000, 33, vec![10, 29, 33])
        );
        // uid:gid — no lookups needed.
        assert_eq!(
            ids(&r(&sc(), "5000:6000").unwrap()),
            (5000, 6000, vec![6000])
        );
        // name:gid
        assert_eq!(ids(&r(&sc(), "www:44").unwrap()), (33, 44, vec![44]));
    }

    #[test]
    fn missing_names_are_not_found() {
        assert!(matches!(r(&sc(), "nobody"), Err(SpecError::NotFound(_))));
        assert!(matches!(
            r(&sc(), "alice:nogroup"),
            Err(SpecError::NotFound(_))
        ));
        // No /etc/passwd at all: names fail, uids work.
        assert!(matches!(
            resolve(&sc(), "alice", None, None),
            Err(SpecError::NotFound(_))
        ));
        assert_eq!(
            ids(&resolve(&sc(), "7", None, None).unwrap()),
            (7, 0, vec![0])
        );
        assert!(matches!(
            r(&sc(), "a:b:c"),
            Err(SpecError::InvalidArgument(_))
        ));
    }

    #[test]
    fn cri_fields_win_over_the_image() {
        let mut s = sc();
        s.run_as_user = Some(33);
        assert_eq!(ids(&r(&s, "alice").unwrap()), (33, 33, vec![33]));
        s.run_as_group = Some(44);
        assert_eq!(ids(&r(&s, "alice").unwrap()), (33, 44, vec![44]));
        let mut s = sc();
        s.run_as_username = "alice".into();
        s.run_as_user = Some(33); // the username wins
        assert_eq!(ids(&r(&s, "").unwrap()), (1000, 1000, vec![10, 29, 1000]));
        let mut s = sc();
        s.run_as_username = "ghost".into();
        assert!(matches!(r(&s, ""), Err(SpecError::NotFound(_))));
    }

    #[test]
    fn group_without_user_is_invalid() {
        let mut s = sc();
        s.run_as_group = Some(5);
        assert!(matches!(r(&s, "alice"), Err(SpecError::InvalidArgument(_))));
        let mut s = sc();
        s.run_as_user = Some(-1);
        assert!(matches!(r(&s, ""), Err(SpecError::InvalidArgument(_))));
    }

    #[test]
    fn merge_and_strict_groups() {
        let mut s = sc();
        s.run_as_user = Some(1000);
        s.supplemental_groups = vec![5000, 29];
        assert_eq!(
            ids(&r(&s, "").unwrap()),
            (1000, 1000, vec![10, 29, 1000, 5000])
        );
        s.supplemental_groups_policy = SupplementalGroupsPolicy::Strict;
        assert_eq!(ids(&r(&s, "").unwrap()), (1000, 1000, vec![29, 1000, 5000]));
        s.supplemental_groups = vec![-3];
        assert!(matches!(r(&s, ""), Err(SpecError::InvalidArgument(_))));
    }
}
