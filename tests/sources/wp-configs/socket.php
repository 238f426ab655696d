<?php
define('DB_NAME', 'sock' . 'db');
define('DB_USER', 'sockuser');
define('DB_PASSWORD', '');
define('DB_HOST', 'localhost:/var/run/mysqld/mysqld.sock');
$table_prefix = 'wp3_'; // trailing comment with 'quotes' and define('DB_NAME','x');
