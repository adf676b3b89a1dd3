//! The internal membership API, for trusted services (service key): create and delete
//! spaces, add, re-role and remove members, list a user's memberships; plus the
//! compatibility endpoint of the server we replace. Every change is a membership event
//! published to the log, exactly as a service publishing straight to NATS would; the
//! answer comes once this gateway's membership view has applied it.

use std::sync::RwLockReadGuard;

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use ingest::{PreparedEvent, membership::Memberships};
use schemas::{
    Cursor, Envelope, Event, Metadata, Role, SpaceType,
    event::EVENT_SCHEMA_VERSION,
    membership::{MemberAdded, MemberRemoved, MemberRoleChanged, SpaceCreated, SpaceDeleted},
    space::personal_space_id,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{AppState, auth::Service, error::ApiError};

/// Who the membership events of this API are attributed to.
const SERVICE_USER: &str = "service:internal-api";
const SERVICE_CLIENT: &str = "internal-api";

/// Namespace of the ids of events that must happen once per space (creation, the
/// personal space's owner), so a retried call is de-duplicated like a retried push.
const MEMBERSHIP_NAMESPACE: Uuid = Uuid::from_u128(0x5b0e_7c1a_92d4_4f6e_8a13_c4d9_0e27_61b5);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/internal/spaces", post(create_space))
        .route(
            "/internal/spaces/{space_id}",
            get(get_space).delete(delete_space),
        )
        .route("/internal/spaces/{space_id}/members", post(add_member))
        .route(
            "/internal/spaces/{space_id}/members/{user_id}",
            axum::routing::patch(change_role).delete(remove_member),
        )
        .route("/internal/users/{user_id}/memberships", get(memberships))
        .route(
            "/api/v1/internal/users/{user_id}/memberships",
            get(legacy_memberships),
        )
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSpace {
    space_id: Option<String>,
    #[serde(rename = "type")]
    space_type: String,
    name: String,
    owner_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    user_id: String,
    role: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    role: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Applied {
    space_id: String,
    /// Log position of the (last) event.
    cursor: String,
}

/// The header naming a creation, so that a retried call without a `spaceId` (after a
/// `503` or a lost answer) creates the space once.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn create_space(
    State(state): State<AppState>,
    _: Service,
    headers: HeaderMap,
    body: Result<Json<CreateSpace>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let space_type = SpaceType::parse(&req.space_type).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown space type {:?} (expected brand, club, family, team or practice)",
            req.space_type
        ))
    })?;
    if space_type == SpaceType::Personal {
        return Err(ApiError::bad_request(
            "personal spaces are created by the server on first use",
        ));
    }
    let space_id = match (req.space_id, idempotency_key(&headers)?) {
        (Some(space_id), _) => space_id,
        (None, Some(key)) => space_id_for_key(key),
        (None, None) => Uuid::new_v4().to_string(),
    };
    id("spaceId", &space_id)?;
    // Personal spaces' ids are v5 UUIDs of their users: a shared space under such an id
    // would be read as someone's personal space.
    if Uuid::parse_str(&space_id).is_ok_and(|u| u.get_version_num() == 5) {
        return Err(ApiError::bad_request(
            "`spaceId` may not be a version 5 UUID (the form of personal spaces' ids)",
        ));
    }
    user_id("ownerId", &req.owner_id)?;
    if req.name.trim().is_empty() || req.name.len() > 256 || req.name.contains('\0') {
        return Err(ApiError::bad_request(
            "`name` must be 1 to 256 bytes of text",
        ));
    }
    // The same creation again (a retry), as the view has it.
    let same = |view: &Memberships| {
        view.space(&space_id).is_some_and(|space| {
            !space.deleted
                && space.space_type == space_type
                && space.name == req.name
                && view.role(&space_id, &req.owner_id) == Some(Role::Owner)
        })
    };
    let answer = |status, cursor: String| {
        let body = json!({
            "spaceId": space_id,
            "type": space_type,
            "name": req.name,
            "ownerId": req.owner_id,
            "cursor": cursor,
        });
        Ok((status, Json(body)))
    };
    {
        let view = view(&state).await?;
        if let Some(space) = view.space(&space_id) {
            if same(&view) {
                // Done already, as of the view's position.
                return answer(StatusCode::OK, applied_as_of_view(&state));
            }
            return Err(ApiError::conflict(format!(
                "space {space_id:?} already exists{}",
                if space.deleted {
                    " (deleted)"
                } else {
                    " with another type, name or owner"
                }
            )));
        }
    }
    let events = space_creation_events(&space_id, space_type, &req.name, &req.owner_id, Utc::now());
    let applied = publish(&state, &space_id, events).await?;
    // A creation of the same id racing with this one, with other details, may have been
    // logged first (ours was then dropped as its duplicate).
    if !same(&*view(&state).await?) {
        return Err(ApiError::conflict(format!(
            "space {space_id:?} was created at the same time with another type, name or owner"
        )));
    }
    answer(StatusCode::CREATED, applied.cursor)
}

/// The `Idempotency-Key` header, if sent: 1 to 256 bytes of visible ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(raw) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bad =
        || ApiError::bad_request("`Idempotency-Key` must be 1 to 256 visible ASCII characters");
    let key = raw.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key))
}

/// The space id a creation under idempotency key `key` gets: the same for every retry,
/// a version 8 UUID (never the form of a personal space's id).
fn space_id_for_key(key: &str) -> String {
    let hashed = Uuid::new_v5(&MEMBERSHIP_NAMESPACE, format!("space-key:{key}").as_bytes());
    Uuid::new_v8(*hashed.as_bytes()).to_string()
}

/// The cursor of a call that changed nothing (its effect was in force already): the
/// position this gateway's view has applied the log to.
fn applied_as_of_view(state: &AppState) -> String {
    Cursor(state.memberships().position()).encode()
}

async fn get_space(
    State(state): State<AppState>,
    _: Service,
    Path(space_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let view = view(&state).await?;
    let space = view
        .space(&space_id)
        .ok_or_else(|| ApiError::not_found(format!("no space {space_id:?}")))?;
    let members: Vec<Value> = view
        .members_of(&space_id)
        .into_iter()
        .map(|(user, role)| json!({"userId": user, "role": role}))
        .collect();
    Ok(Json(json!({
        "spaceId": space_id,
        "type": space.space_type,
        "name": space.name,
        "deleted": space.deleted,
        "members": members,
    })))
}

async fn delete_space(
    State(state): State<AppState>,
    _: Service,
    Path(space_id): Path<String>,
) -> Result<Json<Applied>, ApiError> {
    shared_space(&*view(&state).await?, &space_id)?;
    let event = Event::SpaceDeleted(SpaceDeleted {
        space_id: space_id.clone(),
    });
    Ok(Json(publish_one(&state, &space_id, event).await?))
}

async fn add_member(
    State(state): State<AppState>,
    _: Service,
    Path(space_id): Path<String>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<Json<Applied>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    user_id("userId", &req.user_id)?;
    let role = role(&req.role)?;
    {
        let view = view(&state).await?;
        shared_space(&view, &space_id)?;
        match view.role(&space_id, &req.user_id) {
            // The same addition again (a retry): done already.
            Some(current) if current == role => {
                return Ok(Json(Applied {
                    space_id,
                    cursor: applied_as_of_view(&state),
                }));
            }
            Some(current) => {
                return Err(ApiError::conflict(format!(
                    "{:?} is already a member ({}); change the role instead",
                    req.user_id,
                    current.as_str()
                )));
            }
            None => {}
        }
    }
    let event = Event::MemberAdded(MemberAdded {
        space_id: space_id.clone(),
        user_id: req.user_id,
        role,
    });
    Ok(Json(publish_one(&state, &space_id, event).await?))
}

async fn change_role(
    State(state): State<AppState>,
    _: Service,
    Path((space_id, user_id)): Path<(String, String)>,
    body: Result<Json<ChangeRole>, JsonRejection>,
) -> Result<Json<Applied>, ApiError> {
    let Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let role = role(&req.role)?;
    member(&*view(&state).await?, &space_id, &user_id)?;
    let event = Event::MemberRoleChanged(MemberRoleChanged {
        space_id: space_id.clone(),
        user_id,
        role,
    });
    Ok(Json(publish_one(&state, &space_id, event).await?))
}

async fn remove_member(
    State(state): State<AppState>,
    _: Service,
    Path((space_id, user_id)): Path<(String, String)>,
) -> Result<Json<Applied>, ApiError> {
    member(&*view(&state).await?, &space_id, &user_id)?;
    let event = Event::MemberRemoved(MemberRemoved {
        space_id: space_id.clone(),
        user_id,
    });
    Ok(Json(publish_one(&state, &space_id, event).await?))
}

/// Every space `user_id` is a member of, their personal space included.
async fn memberships(
    State(state): State<AppState>,
    _: Service,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = user_memberships(&state, &user_id)
        .await?
        .into_iter()
        .map(
            |(space, space_type, role)| json!({"spaceId": space, "type": space_type, "role": role}),
        )
        .collect();
    Ok(Json(json!({"userId": user_id, "memberships": list})))
}

/// The Go server's shape: `{"userId", "memberships": [{"organizationId", "role"}]}`.
async fn legacy_memberships(
    State(state): State<AppState>,
    _: Service,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let list: Vec<Value> = user_memberships(&state, &user_id)
        .await?
        .into_iter()
        .map(|(space, _, role)| json!({"organizationId": space, "role": role}))
        .collect();
    Ok(Json(json!({"userId": user_id, "memberships": list})))
}

async fn user_memberships(
    state: &AppState,
    user_id: &str,
) -> Result<Vec<(String, Option<SpaceType>, Role)>, ApiError> {
    self::user_id("userId", user_id)?;
    let access = state.access(user_id).await?;
    let view = state.memberships().now();
    let personal = personal_space_id(user_id);
    Ok(access
        .readable_spaces()
        .into_iter()
        .filter_map(|space| {
            let role = access.role(&space)?;
            let space_type = if space == personal {
                Some(SpaceType::Personal)
            } else {
                view.as_ref()
                    .and_then(|v| v.space(&space))
                    .map(|s| s.space_type)
            };
            Some((space, space_type, role))
        })
        .collect())
}

/// The events that create `user_id`'s personal space with them as its owner. Their
/// ids depend only on the user, so creating it twice is creating it once.
pub fn personal_space_events(user_id: &str, at: DateTime<Utc>) -> Vec<PreparedEvent> {
    let space_id = personal_space_id(user_id);
    space_creation_events(&space_id, SpaceType::Personal, "Personal", user_id, at)
}

/// `SpaceCreated` and the owner's `MemberAdded`. Their ids depend only on the space and
/// the owner, so a retried creation is de-duplicated like a retried push.
fn space_creation_events(
    space_id: &str,
    space_type: SpaceType,
    name: &str,
    owner_id: &str,
    at: DateTime<Utc>,
) -> Vec<PreparedEvent> {
    vec![
        PreparedEvent::new(envelope(
            once_id(space_id, "created"),
            Event::SpaceCreated(SpaceCreated {
                space_id: space_id.to_owned(),
                space_type,
                name: name.to_owned(),
            }),
            at,
        )),
        PreparedEvent::new(envelope(
            once_id(space_id, "owner"),
            Event::MemberAdded(MemberAdded {
                space_id: space_id.to_owned(),
                user_id: owner_id.to_owned(),
                role: Role::Owner,
            }),
            at,
        )),
    ]
}

fn envelope(event_id: Uuid, event: Event, at: DateTime<Utc>) -> Envelope {
    let at = schemas::time::truncate_micros(at);
    Envelope {
        event_id,
        schema_version: EVENT_SCHEMA_VERSION,
        occurred_at: at,
        event,
        metadata: Metadata {
            user_id: SERVICE_USER.to_owned(),
            client_id: SERVICE_CLIENT.to_owned(),
            actor: None,
            origin: Some(Value::from("system")),
            received_at: at,
        },
    }
}

/// The id of an event that happens once per space. The owner's `MemberAdded` does not
/// depend on the owner either: of two creations of one space racing with different
/// owners, JetStream keeps the first's events whole and drops the second's.
fn once_id(space_id: &str, what: &str) -> Uuid {
    Uuid::new_v5(
        &MEMBERSHIP_NAMESPACE,
        format!("{space_id}\0{what}\0").as_bytes(),
    )
}

async fn publish_one(state: &AppState, space_id: &str, event: Event) -> Result<Applied, ApiError> {
    let event = PreparedEvent::new(envelope(Uuid::new_v4(), event, Utc::now()));
    publish(state, space_id, vec![event]).await
}

/// Publishes with acknowledgement, then waits until this gateway's view applied it.
async fn publish(
    state: &AppState,
    space_id: &str,
    events: Vec<PreparedEvent>,
) -> Result<Applied, ApiError> {
    let seq = state.log().publish_events(events).await?;
    if !state
        .memberships()
        .wait_for(seq, state.config().read_your_writes_timeout())
        .await
    {
        // Stored in the log, not yet in effect here: the caller retries (the events are
        // idempotent in effect) or waits.
        return Err(ApiError::unavailable(
            "membership state",
            format!("the view did not reach {seq} in time"),
        ));
    }
    Ok(Applied {
        space_id: space_id.to_owned(),
        cursor: Cursor(seq).encode(),
    })
}

/// The membership view, once it follows the log.
async fn view(state: &AppState) -> Result<RwLockReadGuard<'_, Memberships>, ApiError> {
    state
        .memberships()
        .snapshot(state.config().read_your_writes_timeout())
        .await
}

fn id(what: &str, raw: &str) -> Result<(), ApiError> {
    ingest::validate_id(what, raw).map_err(ApiError::bad_request)
}

/// A user id as tokens carry it (`sub`): any text but control characters, at most
/// [`ingest::validate::MAX_ID_BYTES`]. User ids never go into a subject unescaped, so
/// `.` and the like (e-mail-shaped ids) are fine.
fn user_id(what: &str, raw: &str) -> Result<(), ApiError> {
    let max = ingest::validate::MAX_ID_BYTES;
    if raw.trim().is_empty() || raw.len() > max || raw.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{what}` must be 1 to {max} bytes of text without control characters"
        )));
    }
    Ok(())
}

fn role(raw: &str) -> Result<Role, ApiError> {
    Role::parse(raw).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown role {raw:?} (expected owner, admin, member or viewer)"
        ))
    })
}

/// A space that exists, is not deleted and is not a personal space.
fn shared_space(view: &Memberships, space_id: &str) -> Result<(), ApiError> {
    match view.space(space_id) {
        Some(s) if s.deleted => Err(ApiError::not_found(format!(
            "space {space_id:?} was deleted"
        ))),
        Some(s) if s.space_type == SpaceType::Personal => Err(ApiError::bad_request(
            "a personal space has exactly one member, its owner",
        )),
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("no space {space_id:?}"))),
    }
}

fn member(view: &Memberships, space_id: &str, user_id: &str) -> Result<(), ApiError> {
    shared_space(view, space_id)?;
    view.role(space_id, user_id)
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found(format!("{user_id:?} is not a member of {space_id:?}")))
}
