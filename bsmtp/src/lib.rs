pub mod codec;
pub mod reply;
