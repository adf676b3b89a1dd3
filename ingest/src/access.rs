//! What a caller may read and write: their personal space, plus the spaces they are a
//! member of with a role, as the membership view (`crate::membership`) has it at the
//! moment of the request. There is no "unknown" access: a caller whose memberships
//! cannot be read is refused before an `Access` exists (fail closed).

use std::collections::HashMap;

pub use schemas::Role;
use schemas::space::{PERSONAL_SENTINEL_PREFIX, personal_space_id};

/// A caller's access at the moment of a request.
#[derive(Debug, Clone)]
pub struct Access {
    user_id: String,
    personal_space: String,
    roles: HashMap<String, Role>,
}

impl Access {
    /// A caller with their personal space only.
    pub fn personal_only(user_id: &str) -> Self {
        Self::with_roles(user_id, HashMap::new())
    }

    pub fn with_roles(user_id: &str, mut roles: HashMap<String, Role>) -> Self {
        let personal_space = personal_space_id(user_id);
        roles.insert(personal_space.clone(), Role::Owner);
        Self {
            user_id: user_id.to_owned(),
            personal_space,
            roles,
        }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn personal_space(&self) -> &str {
        &self.personal_space
    }

    /// The space a change lands in: the named space, the caller's personal space for
    /// their own `_personal:<userId>` sentinel or for a change naming no space.
    pub fn resolve_space(&self, raw: Option<&str>) -> Result<String, String> {
        match raw {
            None => Ok(self.personal_space.clone()),
            Some(raw) => match raw.strip_prefix(PERSONAL_SENTINEL_PREFIX) {
                Some(owner) if owner == self.user_id => Ok(self.personal_space.clone()),
                Some(_) => Err(format!("{raw:?} is another user's personal space")),
                None => Ok(raw.to_owned()),
            },
        }
    }

    pub fn can_write(&self, space: &str) -> bool {
        self.role(space).is_some_and(Role::can_write)
    }

    pub fn role(&self, space: &str) -> Option<Role> {
        self.roles.get(space).copied()
    }

    /// Every space the caller may read, sorted (a stable order keeps queries cacheable).
    pub fn readable_spaces(&self) -> Vec<String> {
        let mut spaces: Vec<String> = self.roles.keys().cloned().collect();
        spaces.sort();
        spaces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_sentinel_resolves_only_for_its_owner() {
        let a = Access::personal_only("alice");
        assert_eq!(
            a.resolve_space(Some("_personal:alice")).unwrap(),
            personal_space_id("alice")
        );
        assert_eq!(a.resolve_space(None).unwrap(), personal_space_id("alice"));
        assert!(a.resolve_space(Some("_personal:bob")).is_err());
        assert_eq!(a.resolve_space(Some("family")).unwrap(), "family");
    }

    #[test]
    fn writes_need_a_writing_role() {
        let a = Access::with_roles(
            "alice",
            HashMap::from([
                ("team".to_owned(), Role::Member),
                ("club".to_owned(), Role::Viewer),
            ]),
        );
        assert!(a.can_write(&personal_space_id("alice")));
        assert!(a.can_write("team"));
        assert!(!a.can_write("club"));
        assert!(!a.can_write("elsewhere"));
        assert_eq!(a.readable_spaces().len(), 3);
    }
}
