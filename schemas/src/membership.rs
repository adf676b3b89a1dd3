//! Spaces and memberships as events: the facts that decide who may read and write what.
//!
//! Every membership event travels on its space's `space.<space>.members` subject, so a
//! space's membership history is totally ordered in the log and every consumer (the
//! projector, each gateway's membership view, a replay) derives the same state from it
//! by the same rules ([`MembershipEvent::space_id`], applied as upserts and deletes).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What kind of space. Personal spaces are created by the server on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SpaceType {
    Personal,
    Brand,
    Club,
    Family,
    Team,
    Practice,
}

impl SpaceType {
    pub const ALL: [SpaceType; 6] = [
        SpaceType::Personal,
        SpaceType::Brand,
        SpaceType::Club,
        SpaceType::Family,
        SpaceType::Team,
        SpaceType::Practice,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SpaceType::Personal => "personal",
            SpaceType::Brand => "brand",
            SpaceType::Club => "club",
            SpaceType::Family => "family",
            SpaceType::Team => "team",
            SpaceType::Practice => "practice",
        }
    }

    pub fn parse(raw: &str) -> Option<SpaceType> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// A member's role. Owners and admins manage the space; members read and write;
/// viewers only read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn can_write(self) -> bool {
        !matches!(self, Role::Viewer)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(raw: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpaceCreated {
    pub space_id: String,
    #[serde(rename = "type")]
    pub space_type: SpaceType,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberAdded {
    pub space_id: String,
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberRoleChanged {
    pub space_id: String,
    pub user_id: String,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberRemoved {
    pub space_id: String,
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpaceDeleted {
    pub space_id: String,
}

/// A membership event, borrowed from an [`crate::Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipEvent<'a> {
    SpaceCreated(&'a SpaceCreated),
    MemberAdded(&'a MemberAdded),
    MemberRoleChanged(&'a MemberRoleChanged),
    MemberRemoved(&'a MemberRemoved),
    SpaceDeleted(&'a SpaceDeleted),
}

impl<'a> MembershipEvent<'a> {
    pub fn space_id(&self) -> &'a str {
        match self {
            MembershipEvent::SpaceCreated(e) => &e.space_id,
            MembershipEvent::MemberAdded(e) => &e.space_id,
            MembershipEvent::MemberRoleChanged(e) => &e.space_id,
            MembershipEvent::MemberRemoved(e) => &e.space_id,
            MembershipEvent::SpaceDeleted(e) => &e.space_id,
        }
    }
}
