//! The membership rules, as a state machine over membership events. Every gateway's
//! membership view runs exactly this; the projector applies the same rules in SQL
//! (`projector::apply`), and a test holds the two to each other.
//!
//! - `SpaceCreated` creates a space once; a second one for the same id changes nothing.
//! - `MemberAdded` makes a user a member (or sets their role) of an existing, undeleted
//!   space; for any other space it changes nothing.
//! - `MemberRoleChanged` changes the role of a member; for a non-member, nothing.
//! - `MemberRemoved` ends a membership.
//! - `SpaceDeleted` marks the space deleted and ends every membership in it.

use std::collections::{HashMap, HashSet};

use schemas::{Role, SpaceType, membership::MembershipEvent, space::personal_space_id};

use crate::Access;

/// What is known of a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    pub space_type: SpaceType,
    pub name: String,
    pub deleted: bool,
}

/// Spaces and who is a member of them with which role.
#[derive(Debug, Clone, Default)]
pub struct Memberships {
    spaces: HashMap<String, Space>,
    /// user → space → role.
    by_user: HashMap<String, HashMap<String, Role>>,
    /// space → its members (to end them all when the space is deleted).
    by_space: HashMap<String, HashSet<String>>,
}

impl Memberships {
    /// Loads a space as a snapshot has it.
    pub fn load_space(&mut self, space_id: &str, space: Space) {
        self.spaces.insert(space_id.to_owned(), space);
    }

    /// Loads a membership as a snapshot has it.
    pub fn load_member(&mut self, space_id: &str, user_id: &str, role: Role) {
        self.set(space_id, user_id, Some(role));
    }

    pub fn apply(&mut self, event: MembershipEvent<'_>) {
        match event {
            MembershipEvent::SpaceCreated(e) => {
                self.spaces.entry(e.space_id.clone()).or_insert(Space {
                    space_type: e.space_type,
                    name: e.name.clone(),
                    deleted: false,
                });
            }
            MembershipEvent::MemberAdded(e) => {
                if self.space(&e.space_id).is_some_and(|s| !s.deleted) {
                    self.set(&e.space_id, &e.user_id, Some(e.role));
                }
            }
            MembershipEvent::MemberRoleChanged(e) => {
                if self.role(&e.space_id, &e.user_id).is_some() {
                    self.set(&e.space_id, &e.user_id, Some(e.role));
                }
            }
            MembershipEvent::MemberRemoved(e) => self.set(&e.space_id, &e.user_id, None),
            MembershipEvent::SpaceDeleted(e) => {
                if let Some(space) = self.spaces.get_mut(&e.space_id) {
                    space.deleted = true;
                }
                for user in self.by_space.remove(&e.space_id).unwrap_or_default() {
                    if let Some(roles) = self.by_user.get_mut(&user) {
                        roles.remove(&e.space_id);
                    }
                }
            }
        }
    }

    pub fn space(&self, space_id: &str) -> Option<&Space> {
        self.spaces.get(space_id)
    }

    pub fn role(&self, space_id: &str, user_id: &str) -> Option<Role> {
        self.by_user.get(user_id)?.get(space_id).copied()
    }

    /// Whether `user_id` may write into `space_id` now: it is their personal space, or
    /// they are a member with a writing role (what [`Access::can_write`] says of the
    /// same state, without building the caller's whole access).
    pub fn may_write(&self, user_id: &str, space_id: &str) -> bool {
        self.role(space_id, user_id).is_some_and(Role::can_write)
            || space_id == personal_space_id(user_id)
    }

    /// Every space `user_id` is a member of, with the role.
    pub fn roles_of(&self, user_id: &str) -> HashMap<String, Role> {
        self.by_user.get(user_id).cloned().unwrap_or_default()
    }

    /// What `user_id` may read and write right now.
    pub fn access(&self, user_id: &str) -> Access {
        Access::with_roles(user_id, self.roles_of(user_id))
    }

    /// Members of a space, sorted by user id.
    pub fn members_of(&self, space_id: &str) -> Vec<(String, Role)> {
        let mut members: Vec<_> = self
            .by_space
            .get(space_id)
            .into_iter()
            .flatten()
            .filter_map(|u| Some((u.clone(), self.role(space_id, u)?)))
            .collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
    }

    fn set(&mut self, space_id: &str, user_id: &str, role: Option<Role>) {
        match role {
            Some(role) => {
                self.by_user
                    .entry(user_id.to_owned())
                    .or_default()
                    .insert(space_id.to_owned(), role);
                self.by_space
                    .entry(space_id.to_owned())
                    .or_default()
                    .insert(user_id.to_owned());
            }
            None => {
                if let Some(roles) = self.by_user.get_mut(user_id) {
                    roles.remove(space_id);
                    if roles.is_empty() {
                        self.by_user.remove(user_id);
                    }
                }
                if let Some(users) = self.by_space.get_mut(space_id) {
                    users.remove(user_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::membership::{
        MemberAdded, MemberRemoved, MemberRoleChanged, SpaceCreated, SpaceDeleted,
    };

    fn created(space: &str) -> SpaceCreated {
        SpaceCreated {
            space_id: space.into(),
            space_type: SpaceType::Family,
            name: "Family".into(),
        }
    }

    fn added(space: &str, user: &str, role: Role) -> MemberAdded {
        MemberAdded {
            space_id: space.into(),
            user_id: user.into(),
            role,
        }
    }

    #[test]
    fn members_join_only_existing_spaces() {
        let mut m = Memberships::default();
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "a",
            Role::Owner,
        )));
        assert_eq!(m.role("fam", "a"), None);
        m.apply(MembershipEvent::SpaceCreated(&created("fam")));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "a",
            Role::Owner,
        )));
        assert_eq!(m.role("fam", "a"), Some(Role::Owner));
    }

    #[test]
    fn role_changes_apply_to_members_only() {
        let mut m = Memberships::default();
        m.apply(MembershipEvent::SpaceCreated(&created("fam")));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "b",
            Role::Member,
        )));
        let to_viewer = |user: &str| MemberRoleChanged {
            space_id: "fam".into(),
            user_id: user.into(),
            role: Role::Viewer,
        };
        m.apply(MembershipEvent::MemberRoleChanged(&to_viewer("b")));
        m.apply(MembershipEvent::MemberRoleChanged(&to_viewer("c")));
        assert_eq!(m.role("fam", "b"), Some(Role::Viewer));
        assert_eq!(m.role("fam", "c"), None);
        assert!(!m.access("b").can_write("fam"));
        assert!(m.access("b").readable_spaces().contains(&"fam".to_owned()));
    }

    #[test]
    fn removal_and_deletion_end_access() {
        let mut m = Memberships::default();
        m.apply(MembershipEvent::SpaceCreated(&created("fam")));
        for user in ["a", "b", "c"] {
            m.apply(MembershipEvent::MemberAdded(&added(
                "fam",
                user,
                Role::Member,
            )));
        }
        m.apply(MembershipEvent::MemberRemoved(&MemberRemoved {
            space_id: "fam".into(),
            user_id: "b".into(),
        }));
        assert_eq!(m.role("fam", "b"), None);
        assert_eq!(m.members_of("fam").len(), 2);
        m.apply(MembershipEvent::SpaceDeleted(&SpaceDeleted {
            space_id: "fam".into(),
        }));
        assert!(m.members_of("fam").is_empty());
        assert!(m.roles_of("a").is_empty());
        assert!(m.space("fam").unwrap().deleted);
        // A deleted space takes no new members.
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "a",
            Role::Owner,
        )));
        assert_eq!(m.role("fam", "a"), None);
        // Only the personal space is left.
        assert_eq!(m.access("a").readable_spaces().len(), 1);
    }

    #[test]
    fn may_write_says_what_access_says() {
        let mut m = Memberships::default();
        m.apply(MembershipEvent::SpaceCreated(&created("fam")));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "a",
            Role::Owner,
        )));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "b",
            Role::Member,
        )));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "v",
            Role::Viewer,
        )));
        m.apply(MembershipEvent::MemberAdded(&added(
            "fam",
            "x",
            Role::Member,
        )));
        m.apply(MembershipEvent::MemberRemoved(&MemberRemoved {
            space_id: "fam".into(),
            user_id: "x".into(),
        }));
        let spaces = [
            "fam",
            "elsewhere",
            &personal_space_id("a"),
            &personal_space_id("b"),
        ];
        for user in ["a", "b", "v", "x", "nobody"] {
            for space in spaces {
                assert_eq!(
                    m.may_write(user, space),
                    m.access(user).can_write(space),
                    "{user} in {space}"
                );
            }
        }
        assert!(m.may_write("b", "fam"));
        assert!(!m.may_write("v", "fam"));
        assert!(!m.may_write("x", "fam"));
        assert!(m.may_write("x", &personal_space_id("x")));
        assert!(!m.may_write("x", &personal_space_id("a")));
    }
}
