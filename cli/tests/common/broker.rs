//! The RabbitMQ cluster that scripts/test.sh starts (three nodes on loopback): URLs of
//! its vhosts and users, naming every node, rabbitmqctl on one node or all, emptying
//! queues between tests, publishing raw messages.

use std::process::Command;

use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use locality_proto::topology::{
    control_queue, dead_letter_queue, events_queue, jobs_queue, retry_queue,
    SUBMIT_DEAD_LETTER_QUEUE, SUBMIT_QUEUE,
};
use locality_proto::{Priority, RegionId};

use super::results::TEST_RESULTS_QUEUE;

/// Distributed tests share one broker and its queue names, and one of them restarts
/// the broker: they run one at a time.
pub static BROKER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const VHOSTS: [&str; 4] = ["scheduler", "eu", "ca", "sg"];

/// The broker started by scripts/rabbitmq-up.sh. Fails loudly without it.
pub struct Broker {
    /// The first node's port.
    pub port: u16,
    /// Every node's port, the first node's first.
    pub ports: Vec<u16>,
    /// Every node's environment file (its node name, for rabbitmqctl).
    env_files: Vec<String>,
}

fn listed(variable: &str) -> Option<Vec<String>> {
    let value = std::env::var(variable).ok()?;
    Some(value.split(',').map(str::to_string).collect())
}

impl Broker {
    pub fn from_env() -> Self {
        let port = std::env::var("LOCALITY_TEST_AMQP_PORT").expect(
            "LOCALITY_TEST_AMQP_PORT is not set: these tests need the RabbitMQ broker that \
             scripts/test.sh starts; run the suite with scripts/test.sh",
        );
        let env_file = std::env::var("LOCALITY_TEST_RABBITMQ_ENV")
            .expect("LOCALITY_TEST_RABBITMQ_ENV is not set: run the suite with scripts/test.sh");
        let ports = listed("LOCALITY_TEST_AMQP_PORTS").unwrap_or_else(|| vec![port.clone()]);
        let env_files = listed("LOCALITY_TEST_RABBITMQ_ENVS").unwrap_or_else(|| vec![env_file]);
        assert_eq!(ports.len(), env_files.len(), "one environment per node");
        Self {
            port: port.parse().expect("a port number"),
            ports: ports
                .iter()
                .map(|port| port.parse().expect("a port number"))
                .collect(),
            env_files,
        }
    }

    /// The URL of a vhost with the credentials of that vhost's own user.
    pub fn url(&self, vhost: &str) -> String {
        self.url_as(vhost, vhost)
    }

    /// The URL of `vhost` with the credentials of `user_vhost`'s user, naming every node
    /// (comma-separated, as a deployment gives a cluster's nodes).
    pub fn url_as(&self, user_vhost: &str, vhost: &str) -> String {
        self.on_every_node(&format!("locality-{user_vhost}:secret-{user_vhost}"), vhost)
    }

    /// The URL of a vhost through one address only (a proxy in front of the first node),
    /// so that cutting it cuts the process off the whole broker.
    pub fn url_through(&self, vhost: &str, port: u16) -> String {
        format!("amqp://locality-{vhost}:secret-{vhost}@127.0.0.1:{port}/{vhost}")
    }

    fn on_every_node(&self, credentials: &str, vhost: &str) -> String {
        self.ports
            .iter()
            .map(|port| format!("amqp://{credentials}@127.0.0.1:{port}/{vhost}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The scheduler's vhost as a tenant's upload pipeline connects to it: as the
    /// tenant's own broker user (scripts/rabbitmq-tenant-user.sh).
    pub fn tenant_url(&self, tenant: &str) -> String {
        self.on_every_node(&format!("{tenant}:pipeline-{tenant}"), "scheduler")
    }

    pub fn admin_url(&self, vhost: &str) -> String {
        self.on_every_node("locality-admin:admin-secret", vhost)
    }

    /// Creates (or updates) the broker user of `tenant`'s upload pipeline, with password
    /// `pipeline-TENANT`, as an operator does with scripts/rabbitmq-tenant-user.sh.
    pub fn tenant_user(&self, tenant: &str) {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/rabbitmq-tenant-user.sh"
        );
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{}' && '{script}' '{tenant}' 'pipeline-{tenant}' scheduler rabbitmqctl -n \"$RABBITMQ_NODENAME\"",
                self.env_files[0]
            ))
            .status()
            .expect("bash runs");
        assert!(status.success(), "rabbitmq-tenant-user.sh {tenant} failed");
    }

    /// Runs rabbitmqctl against the first node.
    pub fn ctl(&self, args: &str) {
        self.ctl_on(0, args);
    }

    /// Runs rabbitmqctl against node `node` (0 is the first).
    pub fn ctl_on(&self, node: usize, args: &str) {
        let status = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{}' && rabbitmqctl -q -n \"$RABBITMQ_NODENAME\" {args}",
                self.env_files[node]
            ))
            .status()
            .expect("bash runs");
        assert!(status.success(), "rabbitmqctl {args} on node {node} failed");
    }

    /// How many nodes the broker has.
    pub fn nodes(&self) -> usize {
        self.env_files.len()
    }

    /// Stops the broker application on every node, the first node last.
    pub fn stop_all(&self) {
        for node in (0..self.nodes()).rev() {
            self.ctl_on(node, "stop_app");
        }
    }

    /// Starts it again, the first node (the last stopped, which waits for no peer) first.
    pub fn start_all(&self) {
        for node in 0..self.nodes() {
            self.ctl_on(node, "start_app");
        }
    }

    /// rabbitmqctl's output on node `node`.
    pub fn ctl_output(&self, node: usize, args: &str) -> String {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(
                ". '{}' && rabbitmqctl -q -n \"$RABBITMQ_NODENAME\" {args}",
                self.env_files[node]
            ))
            .output()
            .expect("bash runs");
        assert!(output.status.success(), "rabbitmqctl {args} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The node name of node `node` (`locality-test-PORT@localhost`).
    pub fn node_name(&self, node: usize) -> String {
        format!("locality-test-{}@localhost", self.ports[node])
    }

    /// A quorum queue's leader and members, as node names, asked of node `ask`.
    pub fn queue_leader_and_members(
        &self,
        ask: usize,
        vhost: &str,
        queue: &str,
    ) -> (String, Vec<String>) {
        let listing = self.ctl_output(
            ask,
            &format!("list_queues -p {vhost} --no-table-headers name leader members"),
        );
        let line = listing
            .lines()
            .find(|line| line.split_whitespace().next() == Some(queue))
            .unwrap_or_else(|| panic!("{queue} not listed in {vhost}: {listing}"));
        let mut fields = line.split_whitespace().skip(1);
        let leader = fields.next().expect("a leader").to_string();
        let members = fields
            .flat_map(|field| field.split(','))
            .map(|member| {
                member
                    .trim_matches(|c| c == '[' || c == ']' || c == ' ')
                    .to_string()
            })
            .filter(|member| !member.is_empty())
            .collect();
        (leader, members)
    }

    /// Deletes every queue Locality and these tests use, so a test starts empty.
    pub async fn reset(&self) {
        for vhost in VHOSTS {
            let mut queues = vec![TEST_RESULTS_QUEUE.to_string()];
            if vhost == "scheduler" {
                queues.extend([
                    SUBMIT_QUEUE.to_string(),
                    SUBMIT_DEAD_LETTER_QUEUE.to_string(),
                    locality_proto::topology::RESULTS_LEDGER_QUEUE.to_string(),
                ]);
            } else {
                let region = RegionId::new(vhost).unwrap();
                queues.extend([
                    jobs_queue(&region, Priority::Interactive),
                    jobs_queue(&region, Priority::Batch),
                    retry_queue(&region),
                    control_queue(&region),
                    events_queue(&region),
                    dead_letter_queue(&region),
                ]);
            }
            for queue in queues {
                self.delete_queue(vhost, &queue).await;
            }
        }
    }

    /// Deletes a queue if it is there, on a connection of its own. A quorum queue's
    /// deletion waits for its members; if the broker closes the connection meanwhile,
    /// lapin may never settle the request, so each try is bounded and a new connection
    /// tries again.
    async fn delete_queue(&self, vhost: &str, queue: &str) {
        for _ in 0..5 {
            let attempt = async {
                let connection = locality_broker::connect(&self.admin_url(vhost), "test-reset")
                    .await
                    .unwrap_or_else(|e| panic!("broker not reachable for vhost {vhost}: {e}"));
                let channel = connection.create_channel().await?;
                // Deleting a queue that is not there may close the channel: that is fine.
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
                let _ = connection.close(200, "reset done".into()).await;
                Ok::<(), lapin::Error>(())
            };
            match tokio::time::timeout(std::time::Duration::from_secs(20), attempt).await {
                Ok(Ok(())) => return,
                Ok(Err(err)) => eprintln!("resetting {vhost}/{queue}: {err}; again"),
                Err(_) => eprintln!("resetting {vhost}/{queue} did not settle in 20 s; again"),
            }
        }
        panic!("could not delete {vhost}/{queue}");
    }

    /// Messages in a queue of a vhost (0 if the queue does not exist).
    pub async fn queue_length(&self, vhost: &str, queue: &str) -> u32 {
        let connection = locality_broker::connect(&self.admin_url(vhost), "test-inspect")
            .await
            .expect("broker reachable");
        let channel = connection.create_channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let count = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        let _ = connection.close(200, "done".into()).await;
        count
    }
}

/// Publishes raw bytes (confirmed), as a broken or hostile publisher with the
/// credentials in `url` could.
pub async fn publish_raw(
    url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let connection = locality_broker::connect(url, "test-publisher")
        .await
        .unwrap();
    let channel = locality_broker::confirm_channel(&connection).await.unwrap();
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = connection.close(200, "done".into()).await;
}

/// Publishes a submission to `locality.submit` as `tenant`'s pipeline (connected
/// with `url`) does: JSON, persistent, its user id and this message id.
pub async fn publish_submission(url: &str, tenant: &str, message_id: &str, body: &[u8]) {
    let properties = BasicProperties::default()
        .with_content_type(locality_proto::topology::CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_message_id(message_id.into())
        .with_user_id(tenant.into());
    publish_raw(
        url,
        locality_proto::topology::SUBMIT_EXCHANGE,
        tenant,
        body,
        properties,
    )
    .await;
}

/// Takes one message off a queue (as the admin), or fails when it is empty.
pub async fn take_one(broker: &Broker, vhost: &str, queue: &str) -> Vec<u8> {
    let connection = locality_broker::connect(&broker.admin_url(vhost), "test-take")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            queue.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{queue} on {vhost} is empty"));
    let _ = connection.close(200, "done".into()).await;
    message.delivery.data.clone()
}

pub fn headers(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in pairs {
        table.insert((*name).into(), value.clone());
    }
    table
}

/// `properties` with the signature of `region`'s current message key over the route,
/// the attempt header, `tenant` and `body`, as the scheduler (to a region) or the
/// region's workers (to the scheduler) sign.
pub fn signed(
    config: &locality_proto::Config,
    region: &str,
    route: locality_broker::Route<'_>,
    tenant: &str,
    body: &[u8],
    properties: BasicProperties,
) -> BasicProperties {
    let keys = config.regions[&RegionId::new(region).unwrap()]
        .message_keys()
        .expect("the region has message keys");
    locality_broker::signed(properties, &keys, route, tenant, body)
}

/// The route of a job the scheduler sends to a region's `routing_key` (its priority).
pub fn job_route(routing_key: &str) -> locality_broker::Route<'_> {
    locality_broker::Route {
        direction: locality_proto::signing::Direction::ToRegion,
        kind: "job",
        routing_key,
    }
}

/// The route of a request (erasure, export) the scheduler sends to a region.
pub fn request_route() -> locality_broker::Route<'static> {
    locality_broker::Route {
        direction: locality_proto::signing::Direction::ToRegion,
        kind: "request",
        routing_key: locality_proto::topology::CONTROL_ROUTING_KEY,
    }
}
