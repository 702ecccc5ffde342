-- The example inventory schema (matches cdc_cache/examples/inventory.rules.yaml) and the
-- privileges Debezium's MySQL connector needs.
CREATE DATABASE IF NOT EXISTS inventory;
USE inventory;

CREATE TABLE IF NOT EXISTS stock (
  id         BIGINT AUTO_INCREMENT PRIMARY KEY,
  sku_id     INT NOT NULL,
  warehouse  VARCHAR(32) NOT NULL,
  qty        INT NOT NULL DEFAULT 0,
  price      DECIMAL(10, 2),
  note       TEXT,
  updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
  UNIQUE KEY sku_warehouse (sku_id, warehouse)
);

-- Rows other cache keys depend on: page:sku:{sku_id} shows each warehouse's city.
CREATE TABLE IF NOT EXISTS warehouses (
  name VARCHAR(32) PRIMARY KEY,
  city VARCHAR(64) NOT NULL
);

CREATE TABLE IF NOT EXISTS products (
  id          BIGINT PRIMARY KEY,
  name        VARCHAR(255) NOT NULL,
  description TEXT,
  weight      DOUBLE
);

CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc';
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES
  ON *.* TO 'cdc'@'%';

-- cdc-cache inspect reads rows by primary key and nothing else: a read-only user
-- (its DSN, password included, is deploy/compose/secrets/inspect-db-url).
CREATE USER IF NOT EXISTS 'inspector'@'%' IDENTIFIED BY 'inspector-local-only';
GRANT SELECT ON inventory.* TO 'inspector'@'%';

-- Heartbeat table: the connector's heartbeat.action.query and the scheduled event below
-- write here, so an idle database still moves the binlog and Debezium keeps sending
-- heartbeats (without them the worker sees an idle source as stalled).
CREATE TABLE IF NOT EXISTS dbz_heartbeat (id INT PRIMARY KEY, ts DATETIME(3));
GRANT INSERT, UPDATE ON inventory.dbz_heartbeat TO 'cdc'@'%';
SET GLOBAL event_scheduler = ON;
CREATE EVENT IF NOT EXISTS dbz_heartbeat ON SCHEDULE EVERY 5 SECOND DO
  INSERT INTO dbz_heartbeat (id, ts) VALUES (1, NOW(3)) ON DUPLICATE KEY UPDATE ts = NOW(3);
