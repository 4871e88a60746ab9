//! The two adapters of the job loop ([`crate::serve`]): the in-process queue of
//! `locality up` and RabbitMQ for `locality worker`. They differ only in how a
//! message travels and settles; what happens to a job is decided by the loop.

pub mod amqp;
pub mod in_process;
