//! What the broker enforces about identity: a message may not claim another user.

use clacks_tests::amqp_url;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};

#[tokio::test]
async fn the_broker_refuses_a_message_carrying_someone_elses_user_id() {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is required for this test and is not reachable: {e}"));
    let channel = connection.create_channel().await.unwrap_or_else(|e| panic!("{e}"));
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap_or_else(|e| panic!("{e}"));
    // Connected as guest, claiming to be admin: agents trust user_id only because the
    // broker refuses exactly this.
    let forged = BasicProperties::default().with_user_id("admin".into());
    let outcome = match channel
        .basic_publish("".into(), "clacks.nowhere".into(), BasicPublishOptions::default(), b"{}", forged)
        .await
    {
        Ok(confirm) => confirm.await.map(|_| ()),
        Err(e) => Err(e),
    };
    let refusal = outcome.expect_err("the broker must refuse a forged user_id").to_string();
    assert!(refusal.contains("PRECONDITION_FAILED") && refusal.contains("user_id"), "{refusal}");
    let _ = connection.close(200, "done".into()).await;
}
