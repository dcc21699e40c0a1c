//! The server's side of the end: how the parts become the one file under its name
//! (`assembly`, today by the append-merge of `merge`), and the names relayup's temp
//! data has there and on the peers (`names`).

pub mod assembly;
pub mod direct;
pub mod merge;
pub mod names;
