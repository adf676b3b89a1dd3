//! The membership projection (`spaces`, `space_members`) read back into the rules'
//! state machine ([`Memberships`]): by a gateway, whole, to start following the log from
//! a checkpoint; by the log stage, for the spaces and authors of a batch, to check each
//! write at its position.

use ingest::membership::{Memberships, Space};
use schemas::{Role, SpaceType};
use sqlx::{PgConnection, Row as _, postgres::PgRow};

/// Every space and membership, as `conn` sees them.
pub async fn load_all(conn: &mut PgConnection) -> Result<Memberships, sqlx::Error> {
    let spaces = sqlx::query("SELECT space_id, type, name, deleted_seq IS NOT NULL FROM spaces")
        .fetch_all(&mut *conn)
        .await?;
    let members = sqlx::query("SELECT space_id, user_id, role FROM space_members")
        .fetch_all(&mut *conn)
        .await?;
    Ok(state(&spaces, &members))
}

/// The spaces of `pairs` (space, user) and those users' memberships in them, as
/// `conn` sees them.
pub async fn load_pairs(
    conn: &mut PgConnection,
    pairs: &[(&str, &str)],
) -> Result<Memberships, sqlx::Error> {
    let (spaces, users): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let space_rows = sqlx::query(
        "SELECT space_id, type, name, deleted_seq IS NOT NULL FROM spaces WHERE space_id = ANY($1)",
    )
    .bind(&spaces)
    .fetch_all(&mut *conn)
    .await?;
    let members = sqlx::query(
        "SELECT m.space_id, m.user_id, m.role FROM space_members m \
         JOIN UNNEST($1::text[], $2::text[]) AS p(space_id, user_id) \
           ON m.space_id = p.space_id AND m.user_id = p.user_id",
    )
    .bind(&spaces)
    .bind(&users)
    .fetch_all(&mut *conn)
    .await?;
    Ok(state(&space_rows, &members))
}

/// Rows of `spaces` (id, type, name, deleted) and `space_members` (space, user, role)
/// as state; a type or role this version does not know is left out.
fn state(spaces: &[PgRow], members: &[PgRow]) -> Memberships {
    let mut state = Memberships::default();
    for r in spaces {
        if let Some(space_type) = SpaceType::parse(r.get(1)) {
            let space = Space {
                space_type,
                name: r.get(2),
                deleted: r.get(3),
            };
            state.load_space(r.get(0), space);
        }
    }
    for r in members {
        if let Some(role) = Role::parse(r.get(2)) {
            state.load_member(r.get(0), r.get(1), role);
        }
    }
    state
}
