//! Training pieces shared by the papers: optimizer wrappers and schedules beyond tch's own.

pub mod consistency;
pub mod coteaching;
pub mod federated;
pub mod gan;
pub mod lbfgs;
pub mod optim;
pub mod supervised;
pub mod orthograd;
pub mod second_order;
pub mod sharpness;
pub mod trajectory;
