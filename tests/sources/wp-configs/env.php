<?php
define( 'DB_NAME', getenv('WORDPRESS_DB_NAME') ?: 'wordpress' );
define( 'DB_USER', 'envuser' );
define( 'DB_PASSWORD', "$secret" );
define( 'DB_HOST', '127.0.0.1' );
$table_prefix = $_ENV['PREFIX'];
