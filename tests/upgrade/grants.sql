-- Run in both databases (the one to update, before the update; the fresh one, after its
-- install): the roles' privileges are part of the catalogs compared.
SELECT eventstore.grant_access('upgrade_reader', 'reader');
SELECT eventstore.grant_access('upgrade_writer', 'writer');
SELECT eventstore.grant_access('upgrade_admin', 'admin');
