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

CREATE TABLE IF NOT EXISTS products (
  id          BIGINT PRIMARY KEY,
  name        VARCHAR(255) NOT NULL,
  description TEXT,
  weight      DOUBLE
);

CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY 'cdc';
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT, LOCK TABLES
  ON *.* TO 'cdc'@'%';
