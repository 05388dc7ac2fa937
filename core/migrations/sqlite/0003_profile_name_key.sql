-- Profile names are unique ignoring surrounding spaces and case (Unicode
-- aware). SQLite's NOCASE folds ASCII only, so the folded name is computed by
-- the library and kept here; the store checks it inside the writing
-- transaction and re-derives it for every row when it opens.
ALTER TABLE profiles ADD COLUMN name_key TEXT;
CREATE INDEX profiles_by_name_key ON profiles(name_key);
