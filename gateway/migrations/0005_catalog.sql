-- What is deployed is announced to every gateway (LISTEN kapal_catalog) whenever it
-- changes, by whoever changes it; the payload names what to reload. (Counting
-- invocations updates functions too, but not current_version: no announcement.)
CREATE FUNCTION kapal_catalog_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kapal_catalog', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER functions_changed AFTER INSERT OR DELETE OR UPDATE OF current_version
    ON functions FOR EACH STATEMENT EXECUTE FUNCTION kapal_catalog_changed('functions');
CREATE TRIGGER api_keys_changed AFTER INSERT OR DELETE OR UPDATE
    ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION kapal_catalog_changed('keys');
CREATE TRIGGER secrets_changed AFTER INSERT OR DELETE OR UPDATE
    ON secrets FOR EACH STATEMENT EXECUTE FUNCTION kapal_catalog_changed('secrets');
