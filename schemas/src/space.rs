//! Space identities that the server derives rather than receives.

use uuid::Uuid;

/// Clients write `_personal:<userId>` for "my personal space" before they know its id.
pub const PERSONAL_SENTINEL_PREFIX: &str = "_personal:";

/// Namespace of the v5 UUIDs naming personal spaces.
const PERSONAL_NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_1f5e_8a3c_4d2b_9e47_2c0b_5a71_d3e9);

/// The id of a user's personal space: a stable v5 UUID of the user id, so every
/// gateway, the projector and a replay agree on it without a lookup.
pub fn personal_space_id(user_id: &str) -> String {
    Uuid::new_v5(&PERSONAL_NAMESPACE, user_id.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_space_is_stable_and_per_user() {
        assert_eq!(personal_space_id("alice"), personal_space_id("alice"));
        assert_ne!(personal_space_id("alice"), personal_space_id("bob"));
    }
}
