\set id random(1, :maxid)
UPDATE accounts SET balance = balance + 1 WHERE id = :id;
