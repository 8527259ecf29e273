-- Traffic splits between a function's versions. No row for a function: its current
-- version serves all of it (so a deploy or a rollback clears its rows). Rows: each
-- version's share in percent (adding up to 100); current_version is then the version
-- with the largest share. Changes are announced like the functions themselves.
CREATE TABLE function_traffic (
    name    text NOT NULL,
    version integer NOT NULL,
    weight  integer NOT NULL CHECK (weight > 0 AND weight <= 100),
    PRIMARY KEY (name, version),
    FOREIGN KEY (name, version) REFERENCES function_versions (name, version) ON DELETE CASCADE
);

CREATE TRIGGER function_traffic_changed AFTER INSERT OR DELETE OR UPDATE
    ON function_traffic FOR EACH STATEMENT EXECUTE FUNCTION kapal_catalog_changed('functions');
