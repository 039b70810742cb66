//! The daemon's database schema: every migration step, in order. The store runs what it is
//! given and knows no other module's tables; this list sits above the modules that own tables
//! (keys, the knowledge base, agents) so that none of them imports another for it. Append only.

use crate::store::{Migration, KEYS_V1};

pub const MIGRATIONS: &[Migration] = &[
    KEYS_V1,
    crate::kb::store::KB_V2,
    crate::agents::AGENTS_V3,
    crate::usage::USAGE_V4,
];
