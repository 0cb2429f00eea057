//! Fencing the single-runner lease. Every runner that takes a plan's lease bumps the lease's
//! generation (`phased.leases` / `phased_lease_generations`), and each unit of work checks, in
//! its own transaction, that the generation is still the one it took: a runner whose lock
//! session ended and whose lease another runner took over gets an error there, its unit rolls
//! back, and it stops (exit 4) instead of working beside the new holder.

use crate::db::DbError;

/// What a fence check found, as the error a stale runner stops with.
pub fn fence_result(plan: &str, generation: i64, found: Option<i64>) -> Result<(), DbError> {
    match found {
        Some(g) if g == generation => Ok(()),
        Some(g) => Err(DbError::LeaseLost(format!(
            "another runner took over plan `{plan}`'s lease (generation {g}, this runner's was {generation}); nothing more was committed by this runner"
        ))),
        None => Err(DbError::LeaseLost(format!(
            "plan `{plan}`'s lease record is gone; nothing more was committed by this runner"
        ))),
    }
}
