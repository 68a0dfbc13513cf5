//! The app's ports: what the use cases need from Mastercard and from the store, as traits in
//! their own words, implemented by the adapters (`mastercard::ports`, `store`).

mod lifecycle;
mod mastercard;
mod store;

pub use lifecycle::*;
pub use mastercard::*;
pub use store::*;
